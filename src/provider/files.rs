//! Routes from YAML files: `fallthrough run --routes FILE|DIR`.
//!
//! In: a file (one or more `---`-separated documents) or a directory of `*.yaml`,
//! `*.yml` and `*.json` files, read in name order.
//! Out: validated routes in load order, or every error found, each with its file and
//! line. Also the change notifications (file events, debounced) that trigger reloads.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::api::{FallbackRouteSpec, TlsSpec, GROUP, KIND, VERSION};
use crate::index::{route_from_spec, Context, InvalidRoute};
use crate::routes::{Route, Timeouts};
use crate::tls::{Certificate, InvalidCertificate};

/// A problem in the route files; the message says where and what to change.
#[derive(Debug, thiserror::Error)]
pub enum RouteFileError {
    /// The path or a file in it cannot be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A directory holds no route files.
    #[error("{0}: no route files (*.yaml, *.yml, *.json) in this directory")]
    NoFiles(PathBuf),
    /// A document is not valid YAML or does not fit the FallbackRoute schema.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A route is well-formed YAML but cannot be served.
    #[error("{path}:{line}: route {route}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line where the document starts.
        line: usize,
        /// `namespace/name`.
        route: String,
        /// What is wrong.
        #[source]
        source: InvalidRoute,
    },
    /// A route's certificate or key cannot be served.
    #[error("{path}:{line}: route {route}: certificate {cert}: {source}")]
    Certificate {
        /// The route file.
        path: PathBuf,
        /// Line where the route's document starts.
        line: usize,
        /// `namespace/name`.
        route: String,
        /// The certificate file.
        cert: PathBuf,
        /// What is wrong (never the key itself).
        #[source]
        source: InvalidCertificate,
    },
    /// Two documents define the same namespace/name.
    #[error("{path}:{line}: route {route} is defined twice (first at {first}); names must be unique per namespace")]
    Duplicate {
        /// The file of the second definition.
        path: PathBuf,
        /// Its line.
        line: usize,
        /// `namespace/name`.
        route: String,
        /// `file:line` of the first definition.
        first: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RouteDocument {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: FallbackRouteSpec,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: Option<BTreeMap<String, String>>,
}

/// The route files under `path`, in load order.
pub fn route_files(path: &Path) -> Result<Vec<PathBuf>, RouteFileError> {
    let read_err = |source| RouteFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Kubernetes ConfigMap mounts keep old copies in `..data`-style hidden entries.
        if name.starts_with('.') {
            continue;
        }
        let is_route_file = [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e));
        if is_route_file && entry.path().is_file() {
            files.push(entry.path());
        }
    }
    if files.is_empty() {
        return Err(RouteFileError::NoFiles(path.to_path_buf()));
    }
    files.sort();
    Ok(files)
}

/// A route's certificate, loaded from its files.
#[derive(Clone, Debug)]
pub struct RouteCert {
    /// Namespace of the route (the expiry metric's label).
    pub namespace: String,
    /// Hosts it is served for.
    pub hosts: Vec<crate::routes::HostMatch>,
    /// The certificate file, for the expiry metric and change polling.
    pub cert_file: PathBuf,
    /// The key file, for change polling.
    pub key_file: PathBuf,
    /// The parsed chain and key.
    pub cert: Certificate,
}

/// Everything route files define.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    /// Routes in load order.
    pub routes: Vec<Route>,
    /// Certificates of routes with `tls`, in load order.
    pub certs: Vec<RouteCert>,
}

/// Reads and checks a certificate and key pair. Errors name the file, never key bytes.
pub fn read_certificate(cert: &Path, key: &Path) -> Result<Certificate, CertFileError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| CertFileError::Read(p.to_path_buf(), e));
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    crate::tls::parse(&cert_pem, &key_pem, crate::tls::unix_now()).map_err(CertFileError::Invalid)
}

/// A certificate file problem.
#[derive(Debug, thiserror::Error)]
pub enum CertFileError {
    /// Unreadable.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    /// Unusable.
    #[error(transparent)]
    Invalid(InvalidCertificate),
}

/// Loads every route under `path`. Any error fails the whole load, so a typo never
/// silently drops a route: the caller keeps serving what it had.
pub fn load(path: &Path, defaults: Timeouts) -> Result<Loaded, Vec<RouteFileError>> {
    let files = route_files(path).map_err(|e| vec![e])?;
    let mut certs = Vec::new();
    let mut routes = Vec::new();
    let mut errors = Vec::new();
    let mut seen: Vec<(String, String)> = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(source) => {
                errors.push(RouteFileError::Read { path: file, source });
                continue;
            }
        };
        for doc in documents(&text) {
            let line = doc.line;
            match parse_document(&file, &doc, defaults) {
                Ok((route, tls)) => {
                    let key = format!("{}/{}", route.namespace, route.name);
                    if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                        errors.push(RouteFileError::Duplicate {
                            path: file.clone(),
                            line,
                            route: key,
                            first: first.clone(),
                        });
                        continue;
                    }
                    seen.push((key.clone(), format!("{}:{line}", file.display())));
                    if let Some(tls) = tls {
                        match route_cert(&file, &route, &tls) {
                            Ok(cert) => certs.push(cert),
                            Err(err) => errors.push(match err {
                                CertFileError::Read(path, source) => {
                                    RouteFileError::Read { path, source }
                                }
                                CertFileError::Invalid(source) => RouteFileError::Certificate {
                                    path: file.clone(),
                                    line,
                                    route: key,
                                    cert: relative_to(
                                        &file,
                                        tls.cert_file.as_deref().unwrap_or_default(),
                                    ),
                                    source,
                                },
                            }),
                        }
                    }
                    routes.push(route);
                }
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(Loaded { routes, certs })
    } else {
        Err(errors)
    }
}

/// A path from a route file, relative to that file's directory.
fn relative_to(route_file: &Path, path: &str) -> PathBuf {
    let dir = route_file.parent().unwrap_or(Path::new("."));
    dir.join(path)
}

fn route_cert(route_file: &Path, route: &Route, tls: &TlsSpec) -> Result<RouteCert, CertFileError> {
    // Validation made sure both are set in files.
    let cert_file = relative_to(route_file, tls.cert_file.as_deref().unwrap_or_default());
    let key_file = relative_to(route_file, tls.key_file.as_deref().unwrap_or_default());
    let cert = read_certificate(&cert_file, &key_file)?;
    Ok(RouteCert {
        namespace: route.namespace.clone(),
        hosts: route.hosts.clone(),
        cert_file,
        key_file,
        cert,
    })
}

/// One document of a route file.
struct Document<'a> {
    /// Its text, from its `---` line (if it has one) to its `...` line or the next `---`.
    text: &'a str,
    /// 1-based line in the file of the first line of `text`.
    first_line: usize,
    /// 1-based line of its first content: where errors about the whole route point.
    line: usize,
}

/// Splits a YAML stream into documents, skipping those with nothing but comments, blank
/// lines and directives.
///
/// YAML never reads `---` or `...` at the start of a line, followed by a space, a tab or
/// the line's end, as content, not even inside a block or quoted scalar: such a line is
/// always a marker, so splitting on it by hand is exact. A `---` line stays in the document
/// it starts, as the parser reads content after the marker (`--- {apiVersion: …}`,
/// `--- !tag`) on that line; a `...` line ends the document it is in. Parsing each
/// document alone keeps one document's syntax error from hiding the others' errors.
fn documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    // The document being read: where it starts, its first content line, whether it has
    // had its `---` yet (comments and directives before one belong to its document).
    let (mut start, mut first_line, mut line, mut opened) = (0, 1, 0, false);
    let mut offset = 0;
    for (i, text_line) in text.split_inclusive('\n').enumerate() {
        if is_marker(text_line, "---") {
            if line != 0 || opened {
                docs.push(Document {
                    text: &text[start..offset],
                    first_line,
                    line,
                });
                (start, first_line, line) = (offset, i + 1, 0);
            }
            opened = true;
        }
        if line == 0 && has_content(text_line) {
            line = i + 1;
        }
        offset += text_line.len();
        if is_marker(text_line, "...") {
            docs.push(Document {
                text: &text[start..offset],
                first_line,
                line,
            });
            (start, first_line, line, opened) = (offset, i + 2, 0, false);
        }
    }
    docs.push(Document {
        text: &text[start..],
        first_line,
        line,
    });
    docs.retain(|d| d.line != 0);
    docs
}

/// Whether `line` starts with the document marker `marker` (`---` or `...`).
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Whether `line` holds more than a marker, a comment, a directive or white space.
fn has_content(line: &str) -> bool {
    if is_marker(line, "...") {
        return false;
    }
    let rest = if is_marker(line, "---") {
        &line[3..]
    } else {
        line
    };
    let rest = rest.trim();
    !rest.is_empty() && !rest.starts_with('#') && !line.starts_with('%')
}

fn parse_document(
    path: &Path,
    doc: &Document<'_>,
    defaults: Timeouts,
) -> Result<(Route, Option<TlsSpec>), RouteFileError> {
    let parse_err = |line: usize, message: String| RouteFileError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    };
    let (parsed, unknown) = deserialize(doc).map_err(|e| parse_err(e.line, e.message))?;
    if let Some(field) = unknown.first() {
        let key = field.rsplit('.').next().unwrap_or(field);
        let line = line_of_key(doc.text, key).map_or(doc.line, |l| doc.first_line + l);
        return Err(parse_err(
            line,
            format!("unknown field {field:?}: check its spelling against the FallbackRoute schema (`fallthrough crd`)"),
        ));
    }
    let expected = format!("{GROUP}/{VERSION}");
    if parsed.api_version != expected || parsed.kind != KIND {
        return Err(parse_err(
            doc.line,
            format!(
                "expected apiVersion: {expected} and kind: {KIND}, found {} {}",
                parsed.api_version, parsed.kind
            ),
        ));
    }
    let namespace = parsed.metadata.namespace.as_deref().unwrap_or("default");
    let trust = FileTrust { route_file: path };
    let ctx = Context {
        trust: Some(&trust),
        ..Context::files(defaults)
    };
    route_from_spec(namespace, &parsed.metadata.name, &parsed.spec, &ctx)
        .map(|validated| (validated.route, parsed.spec.tls.clone()))
        .map_err(|source| RouteFileError::Invalid {
            path: path.to_path_buf(),
            line: doc.line,
            route: format!("{namespace}/{}", parsed.metadata.name),
            source,
        })
}

/// Why a document does not deserialize.
struct DocumentError {
    /// 1-based line in the file.
    line: usize,
    /// What is wrong: the field, if any, the parser's message and its position.
    message: String,
}

/// A document as a [`RouteDocument`], with the paths of the fields it has that the
/// schema lacks.
fn deserialize(doc: &Document<'_>) -> Result<(RouteDocument, Vec<String>), DocumentError> {
    let mut unknown = Vec::new();
    let mut field = None;
    // Snippets would be multi-line; errors here are one line each, `file:line: message`.
    let options = serde_saphyr::options! { with_snippet: false };
    let parsed = serde_saphyr::with_deserializer_from_str_with_options(doc.text, options, |de| {
        let mut note_unknown = |path: serde_ignored::Path| unknown.push(path.to_string());
        let de = serde_ignored::Deserializer::new(de, &mut note_unknown);
        serde_path_to_error::deserialize(de).map_err(|e| {
            // `.` is the document itself; `?` a mapping key.
            let path = e.path().to_string();
            field = (path != "." && path != "?").then_some(path);
            e.into_inner()
        })
    });
    let error = match parsed {
        Ok(parsed) => return Ok((parsed, unknown)),
        Err(error) => error,
    };
    // The parser counts lines in the document; the message counts them in the file.
    let offset = doc.first_line - 1;
    let options = serde_saphyr::render_options! {
        line_offset: offset as u64,
        snippets: serde_saphyr::SnippetMode::Off,
    };
    let message = error.render_with_options(options);
    Err(DocumentError {
        line: error
            .location()
            .map_or(doc.line, |l| offset + l.line() as usize),
        message: match field {
            Some(field) => format!("{field}: {message}"),
            None => message,
        },
    })
}

/// Reads a backend's `tls.caFile`, relative to its route file's directory.
struct FileTrust<'a> {
    route_file: &'a Path,
}

impl crate::index::Trust for FileTrust<'_> {
    fn ca_pem(
        &self,
        _namespace: &str,
        tls: &crate::api::BackendTlsSpec,
    ) -> Result<Option<Vec<u8>>, String> {
        if tls.ca_secret_name.is_some() {
            return Err("caSecretName needs a cluster: in route files give caFile".into());
        }
        let Some(file) = &tls.ca_file else {
            return Ok(None);
        };
        let path = relative_to(self.route_file, file);
        std::fs::read(&path)
            .map(Some)
            .map_err(|err| format!("cannot read caFile {}: {err}", path.display()))
    }
}

/// Best-effort 0-based line of `key:` in a document, for pointing at unknown fields.
fn line_of_key(doc: &str, key: &str) -> Option<usize> {
    doc.lines().position(|l| {
        let l = l.trim_start().trim_start_matches("- ");
        l.strip_prefix(key).is_some_and(|r| r.starts_with(':'))
            || l.strip_prefix(&format!("\"{key}\""))
                .is_some_and(|r| r.starts_with(':'))
    })
}

/// Watches `path` (and, for a file, its directory, so editors' rename-and-replace and
/// ConfigMap symlink swaps are seen) and sends a unit on `changed_tx` after each burst
/// of changes. The returned watcher must be kept alive.
pub fn watch(
    path: &Path,
    changed_tx: mpsc::Sender<()>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::{RecursiveMode, Watcher};
    let is_dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
    let file_name = (!is_dir)
        .then(|| path.file_name().map(|n| n.to_os_string()))
        .flatten();
    let watched: HashSet<PathBuf> = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => [path.to_path_buf()].into(),
        _ => [path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()]
        .into(),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = event.is_ok_and(|e| {
            !e.kind.is_access()
                && (e.paths.is_empty()
                    || e.paths
                        .iter()
                        .any(|p| is_route_change(p, file_name.as_deref())))
        });
        if relevant {
            // A full channel already holds a pending reload: this change will be in it.
            let _ = changed_tx.try_send(());
        }
    })?;
    for dir in &watched {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// Whether a change to `changed` can change the routes: a route file (or, when one file
/// is watched, that file), or a `..`-prefixed entry, which is how Kubernetes swaps a
/// ConfigMap's content. Logs or other files beside the routes are not.
fn is_route_change(changed: &Path, watched_file: Option<&std::ffi::OsStr>) -> bool {
    let Some(name) = changed.file_name() else {
        return false;
    };
    let text = name.to_string_lossy();
    if text.starts_with("..") {
        return true;
    }
    match watched_file {
        Some(file) => name == file,
        None => [".yaml", ".yml", ".json"].iter().any(|e| text.ends_with(e)),
    }
}

/// After a change event, waits out the rest of its burst so one save is one reload.
pub async fn settle(changed_rx: &mut mpsc::Receiver<()>) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    while changed_rx.try_recv().is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: fallthrough.dev/v1alpha1
kind: FallbackRoute
metadata: {name: shop, namespace: web}
spec:
  primary: {url: \"http://127.0.0.1:8080\"}
  fallback: {url: \"http://127.0.0.1:8000\"}
";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn errors_of(path: &Path) -> Vec<String> {
        load(path, Timeouts::default())
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn multi_document_files_load_in_order_with_default_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let second = GOOD.replace("{name: shop, namespace: web}", "{name: blog}");
        let path = write(
            dir.path(),
            "r.yaml",
            &format!("# routes\n---\n{GOOD}---\n{second}"),
        );
        let routes = load(&path, Timeouts::default()).unwrap().routes;
        let names: Vec<_> = routes
            .iter()
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect();
        assert_eq!(names, ["web/shop", "default/blog"]);
    }

    #[test]
    fn directories_load_yaml_files_by_name_and_skip_hidden_entries() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.yaml", &GOOD.replace("shop", "b"));
        write(dir.path(), "a.yml", &GOOD.replace("shop", "a"));
        write(dir.path(), ".hidden.yaml", "not: [valid");
        write(dir.path(), "notes.txt", "ignored");
        let routes = load(dir.path(), Timeouts::default()).unwrap().routes;
        assert_eq!(
            routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn yaml_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let broken = GOOD.replace("  fallback: {url", "  fallback: [url");
        let path = write(dir.path(), "r.yaml", &format!("{GOOD}---\n{broken}"));
        let errors = errors_of(&path);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let expected = format!("{}:13: spec.fallback: ", path.display());
        assert!(
            errors[0].starts_with(&expected),
            "{errors:?} should start with {expected}"
        );
        // The parser's own position is counted in the file too, not in the document.
        assert!(errors[0].ends_with("at line 13, column 13"), "{errors:?}");
    }

    #[test]
    fn unknown_fields_are_errors_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let typo = format!("{GOOD}  fallbackon: [410]\n");
        let path = write(dir.path(), "r.yaml", &typo);
        let errors = errors_of(&path);
        assert!(
            errors[0].starts_with(&format!("{}:7:", path.display())),
            "{errors:?}"
        );
        assert!(errors[0].contains("spec.fallbackon"), "{errors:?}");
    }

    #[test]
    fn invalid_routes_name_the_route_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let bad = GOOD.replace("http://127.0.0.1:8000", "fastcgi://127.0.0.1:8000");
        let path = write(dir.path(), "r.yaml", &format!("---\n{bad}"));
        let errors = errors_of(&path);
        assert!(
            errors[0].starts_with(&format!("{}:2: route web/shop:", path.display())),
            "{errors:?}"
        );
        assert!(errors[0].contains("fastcgi block"), "{errors:?}");
    }

    #[test]
    fn duplicate_names_and_wrong_kinds_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "r.yaml",
            &format!(
                "{GOOD}---\n{GOOD}---\n{}",
                GOOD.replace("kind: FallbackRoute", "kind: Ingress")
            ),
        );
        let errors = errors_of(&path);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("defined twice"), "{errors:?}");
        assert!(errors[1].contains("expected apiVersion"), "{errors:?}");
    }

    /// (first line, first content line, text) of each document `documents` finds.
    fn split(text: &str) -> Vec<(usize, usize, &str)> {
        documents(text)
            .iter()
            .map(|d| (d.first_line, d.line, d.text))
            .collect()
    }

    #[test]
    fn documents_split_on_markers_and_keep_content_on_a_dashes_line() {
        type Case = (
            &'static str,
            &'static str,
            &'static [(usize, usize, &'static str)],
        );
        let cases: &[Case] = &[
            ("no marker", "a: 1\n", &[(1, 1, "a: 1\n")]),
            (
                "a plain ---",
                "a: 1\n---\nb: 2\n",
                &[(1, 1, "a: 1\n"), (2, 3, "---\nb: 2\n")],
            ),
            (
                "a whole flow mapping on the --- line",
                "--- {a: 1}\n--- {b: 2}\n",
                &[(1, 1, "--- {a: 1}\n"), (2, 2, "--- {b: 2}\n")],
            ),
            (
                "--- # comment",
                "--- # first\na: 1\n",
                &[(1, 2, "--- # first\na: 1\n")],
            ),
            ("--- !tag", "--- !x\na: 1\n", &[(1, 1, "--- !x\na: 1\n")]),
            (
                "a tab after ---",
                "a: 1\n---\t{b: 2}\n",
                &[(1, 1, "a: 1\n"), (2, 2, "---\t{b: 2}\n")],
            ),
            (
                "comments before the first --- are its document's",
                "# routes\n\n---\na: 1\n",
                &[(1, 4, "# routes\n\n---\na: 1\n")],
            ),
            (
                "a document of comments alone is skipped",
                "---\n# nothing\n---\na: 1\n",
                &[(3, 4, "---\na: 1\n")],
            ),
            (
                "... ends a document",
                "a: 1\n...\nb: 2\n",
                &[(1, 1, "a: 1\n...\n"), (3, 3, "b: 2\n")],
            ),
            (
                "... with a comment, then ---",
                "a: 1\n... # end\n---\nb: 2\n",
                &[(1, 1, "a: 1\n... # end\n"), (3, 4, "---\nb: 2\n")],
            ),
            (
                "directives go with their document",
                "a: 1\n...\n%YAML 1.2\n---\nb: 2\n",
                &[(1, 1, "a: 1\n...\n"), (3, 5, "%YAML 1.2\n---\nb: 2\n")],
            ),
            (
                "--- in a block scalar is indented: content",
                "a: |\n  ---\n  b\n",
                &[(1, 1, "a: |\n  ---\n  b\n")],
            ),
            (
                "---x is content",
                "a: 1\n---x: 2\n",
                &[(1, 1, "a: 1\n---x: 2\n")],
            ),
            (
                "CRLF",
                "a: 1\r\n---\r\nb: 2\r\n",
                &[(1, 1, "a: 1\r\n"), (2, 3, "---\r\nb: 2\r\n")],
            ),
            ("no final newline", "---\na: 1", &[(1, 2, "---\na: 1")]),
            ("nothing", "# only\n---\n...\n", &[]),
        ];
        for (name, text, expected) in cases {
            assert_eq!(split(text), *expected, "{name}");
            // Each piece is one whole document to the parser, its markers included.
            for (_, _, doc) in *expected {
                let parsed = serde_saphyr::from_str::<BTreeMap<String, serde_json::Value>>(doc);
                assert!(parsed.is_ok(), "{name}: {doc:?}: {parsed:?}");
            }
        }
    }

    /// A route whose whole document is on its `---` line.
    const ONE_LINE: &str = "--- {apiVersion: fallthrough.dev/v1alpha1, kind: FallbackRoute, \
        metadata: {name: blog}, spec: {primary: {url: \"http://127.0.0.1:8080\"}, \
        fallback: {url: \"http://127.0.0.1:8000\"}}}\n";

    #[test]
    fn a_document_may_start_on_its_dashes_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{ONE_LINE}--- # the shop\n{GOOD}...\n");
        let path = write(dir.path(), "r.yaml", &text);
        let routes = load(&path, Timeouts::default()).unwrap().routes;
        let names: Vec<_> = routes
            .iter()
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect();
        assert_eq!(names, ["default/blog", "web/shop"]);
    }

    #[test]
    fn errors_in_documents_that_start_on_a_dashes_line_name_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let unclosed = ONE_LINE.replace("}}}\n", "}}\n");
        let fastcgi = ONE_LINE.replace("http://127.0.0.1:8000", "fastcgi://127.0.0.1:8000");
        let typo = format!("{GOOD}  fallbackon: [410]\n");
        // Line 1: a syntax error; line 2: an invalid route; line 10: an unknown field.
        let text = format!("{unclosed}{fastcgi}--- # c\n{typo}");
        let path = write(dir.path(), "r.yaml", &text);
        let errors = errors_of(&path);
        let p = path.display();
        assert_eq!(
            errors.len(),
            3,
            "one bad document hides no other: {errors:?}"
        );
        assert!(errors[0].starts_with(&format!("{p}:1: ")), "{errors:?}");
        assert!(
            errors[1].starts_with(&format!("{p}:2: route default/blog:")),
            "{errors:?}"
        );
        assert!(errors[0].ends_with("at line 1, column 5"), "{errors:?}");
        assert!(errors[2].starts_with(&format!("{p}:10: ")), "{errors:?}");
        assert!(errors[2].contains("spec.fallbackon"), "{errors:?}");
    }

    #[test]
    fn only_route_files_and_configmap_swaps_trigger_reloads() {
        let file = Some(std::ffi::OsStr::new("routes.yaml"));
        assert!(is_route_change(Path::new("/etc/ft/routes.yaml"), file));
        assert!(!is_route_change(Path::new("/etc/ft/php.log"), file));
        assert!(!is_route_change(Path::new("/etc/ft/other.yaml"), file));
        assert!(is_route_change(Path::new("/etc/ft/..data"), file));
        assert!(is_route_change(Path::new("/etc/ft/b.yml"), None));
        assert!(!is_route_change(Path::new("/etc/ft/notes.txt"), None));
        assert!(!is_route_change(Path::new("/etc/ft/routes.yaml.tmp"), None));
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(errors_of(dir.path())[0].contains("no route files"));
    }
}
