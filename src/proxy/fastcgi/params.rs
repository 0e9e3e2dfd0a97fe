//! The FastCGI params of one request: the CGI/1.1 variables nginx's `fastcgi_params`
//! sends, the script the path names, and every request field as `HTTP_*`.
//!
//! In: the backend's `fastcgi` settings, the request head as it goes upstream, the
//! client's and the listener's addresses, and the body's length.
//! Out: the params as name-value pairs appended to a PARAMS payload, or why the path
//! cannot name a script ([`ScriptPathError`], answered 400). Pure: no I/O.
//!
//! Params are bytes: a decoded path or a field value need not be UTF-8.

use std::net::SocketAddr;

use http::header;

use super::codec::put_name_value;
use crate::proxy::h1::upstream_head::UpstreamHead;
use crate::routes::FastCgi;

/// The two ends of the client's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peers {
    /// The client (`REMOTE_ADDR`, `REMOTE_PORT`).
    pub client: SocketAddr,
    /// The proxy's listening address it reached (`SERVER_ADDR`).
    pub server: SocketAddr,
}

impl Peers {
    /// Addresses not known (yet): `0.0.0.0:0` both.
    pub const UNKNOWN: Peers = Peers {
        client: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
        server: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
    };
}

/// A path that cannot be handed to a FastCGI application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScriptPathError {
    /// Decoding `%2F` or `%2E` made a `.` or `..` segment: the script name would climb
    /// out of the document root.
    #[error("the decoded path has a . or .. segment (from %2F or %2E)")]
    DotSegment,
}

/// The script a path runs and the `PATH_INFO` after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Script {
    /// `SCRIPT_NAME`: from the document root, starting with `/`.
    pub name: Vec<u8>,
    /// `PATH_INFO`: what follows the script in the path (may be empty).
    pub path_info: Vec<u8>,
}

/// The script `path` (decoded, normalised) runs, as nginx's
/// `fastcgi_split_path_info ^(.+?\.php)(/.*)$` with `fastcgi_index` and a front
/// controller's `try_files $uri /index.php` would pick it:
/// - the path up to the first segment ending in `splitPath` is the script, the rest
///   is `PATH_INFO`;
/// - otherwise, with a front controller, the front controller;
/// - otherwise a directory (a path ending in `/` with no `.` in any segment) runs its
///   `index`; PHP-FPM answers 404 when there is no such script;
/// - otherwise `None`: the path names no script, and PHP-FPM is not asked (the primary's
///   answer is a 404, so it falls back).
///
/// Why not send every path and let PHP-FPM find out: with its default
/// `cgi.fix_pathinfo = 1`, PHP-FPM runs the longest existing file at the start of a
/// script path that does not exist, so `/uploads/evil.phar/index.php` would run an
/// uploaded `evil.phar`, and `/robots.txt` would get its 403 "Access denied." instead of
/// falling back. A path whose segments have a `.` is a file, not a directory.
pub fn script(fcgi: &FastCgi, path: &[u8]) -> Option<Script> {
    let split = fcgi.split_path.as_bytes();
    // A segment that ends at `end` names a script if it ends with `splitPath` and has
    // a name before it (`/.php` does not).
    let names_script = |end: usize| {
        end > split.len() && path[..end].ends_with(split) && path[end - split.len() - 1] != b'/'
    };
    let segment_ends = path
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, &b)| b == b'/')
        .map(|(i, _)| i)
        .chain([path.len()]);
    for end in segment_ends {
        if names_script(end) {
            return Some(Script {
                name: path[..end].to_vec(),
                path_info: path[end..].to_vec(),
            });
        }
    }
    if let Some(front) = &fcgi.front_controller {
        return Some(Script {
            name: front.as_bytes().to_vec(),
            path_info: Vec::new(),
        });
    }
    if !path.ends_with(b"/") || path.contains(&b'.') {
        return None;
    }
    let mut name = path.to_vec();
    name.extend_from_slice(fcgi.index.as_bytes());
    Some(Script {
        name,
        path_info: Vec::new(),
    })
}

/// `path` (normalised) with every percent-encoding decoded, as nginx's `$uri`.
pub fn decode_path(path: &str) -> Result<Vec<u8>, ScriptPathError> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    if out
        .split(|&b| b == b'/')
        .any(|segment| segment == b"." || segment == b"..")
    {
        return Err(ScriptPathError::DotSegment);
    }
    Ok(out)
}

/// The script the request in `head` runs, if it names one (see [`script`]).
pub fn script_of(fcgi: &FastCgi, head: &UpstreamHead) -> Result<Option<Script>, ScriptPathError> {
    let target = head.target();
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Ok(script(fcgi, &decode_path(path)?))
}

/// Appends the params of the request in `head`, which runs `script`, to `payload`.
pub fn encode(
    fcgi: &FastCgi,
    head: &UpstreamHead,
    script: &Script,
    content_length: u64,
    payload: &mut Vec<u8>,
) {
    let parts = &head.parts;
    let peers = &head.peers;
    let target = head.target();
    let query = target.split_once('?').map_or("", |(_, query)| query);
    let mut put = |name: &str, value: &[u8]| put_name_value(payload, name.as_bytes(), value);

    let mut filename = fcgi.document_root.as_bytes().to_vec();
    if filename.ends_with(b"/") {
        filename.pop();
    }
    filename.extend_from_slice(&script.name);
    put("SCRIPT_FILENAME", &filename);
    put("SCRIPT_NAME", &script.name);
    put("PATH_INFO", &script.path_info);
    let mut document_uri = script.name.clone();
    document_uri.extend_from_slice(&script.path_info);
    put("DOCUMENT_URI", &document_uri);
    put("DOCUMENT_ROOT", fcgi.document_root.as_bytes());
    put("QUERY_STRING", query.as_bytes());
    put("REQUEST_METHOD", parts.method.as_str().as_bytes());
    // The target as the client sent it, before normalisation (nginx's $request_uri).
    let raw = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    put("REQUEST_URI", raw.as_bytes());
    if let Some(kind) = parts.headers.get(header::CONTENT_TYPE) {
        put("CONTENT_TYPE", kind.as_bytes());
    } else if let Some((_, kind)) = head
        .fields
        .end_to_end()
        .find(|(name, _)| name.eq_ignore_ascii_case(b"content-type"))
    {
        put("CONTENT_TYPE", kind);
    } else {
        put("CONTENT_TYPE", b"");
    }
    put(
        "CONTENT_LENGTH",
        if content_length > 0 {
            content_length.to_string()
        } else {
            String::new()
        }
        .as_bytes(),
    );
    let protocol = match parts.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    put("SERVER_PROTOCOL", protocol.as_bytes());
    put("GATEWAY_INTERFACE", b"CGI/1.1");
    put(
        "SERVER_SOFTWARE",
        concat!("fallthrough/", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    let https = head.forwarded_proto == "https";
    put("REQUEST_SCHEME", head.forwarded_proto.as_bytes());
    if https {
        put("HTTPS", b"on");
    }
    put("REMOTE_ADDR", peers.client.ip().to_string().as_bytes());
    put("REMOTE_PORT", peers.client.port().to_string().as_bytes());
    put("SERVER_ADDR", peers.server.ip().to_string().as_bytes());
    // The public name and port: what the client asked for, not the listener's.
    let host = head
        .forwarded_host
        .as_ref()
        .map_or(&b""[..], |h| h.as_bytes());
    let (name, port) = split_host(host);
    put("SERVER_NAME", name);
    let default_port: &[u8] = if https { b"443" } else { b"80" };
    put("SERVER_PORT", port.unwrap_or(default_port));
    // PHP's force-cgi-redirect check (php-cgi) wants it; nginx's fastcgi_params sends it.
    put("REDIRECT_STATUS", b"200");
    put_fields(head, payload);
    for (name, value) in &fcgi.params {
        put_name_value(payload, name.as_bytes(), value.as_bytes());
    }
}

/// `host[:port]` into the name and the port, if given.
fn split_host(host: &[u8]) -> (&[u8], Option<&[u8]>) {
    let colon = host.iter().rposition(|&b| b == b':');
    match colon {
        // `[::1]` alone has colons but no port.
        Some(i)
            if !host[i + 1..].is_empty()
                && host[i + 1..].iter().all(u8::is_ascii_digit)
                && !host[i..].contains(&b']') =>
        {
            (&host[..i], Some(&host[i + 1..]))
        }
        _ => (host, None),
    }
}

/// Every request field as `HTTP_*` (nginx's `fastcgi_pass_request_headers`), repeated
/// fields joined (`Cookie` with "; ", others with ", "). Left out: names with anything
/// but letters, digits and `-` (nginx's `ignore_invalid_headers`: `X_Foo` would become
/// `HTTP_X_FOO` like `X-Foo`, and PHP turns the `.` of `X.Foo` into `_` too), `Proxy` (httpoxy: PHP would read `HTTP_PROXY` as its proxy), and
/// `Content-Type`/`Content-Length`, which have their own params.
fn put_fields(head: &UpstreamHead, payload: &mut Vec<u8>) {
    let mut fields: Vec<(Vec<u8>, &[u8])> = Vec::new();
    let take = |name: &[u8]| {
        if !name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            || name.eq_ignore_ascii_case(b"proxy")
            || name.eq_ignore_ascii_case(b"content-type")
            || name.eq_ignore_ascii_case(b"content-length")
        {
            return None;
        }
        let mut param = b"HTTP_".to_vec();
        param.extend(name.iter().map(|&b| match b {
            b'-' => b'_',
            b => b.to_ascii_uppercase(),
        }));
        Some(param)
    };
    for (name, value) in &head.parts.headers {
        if let Some(param) = take(name.as_str().as_bytes()) {
            fields.push((param, value.as_bytes()));
        }
    }
    for (name, value) in head.fields.end_to_end() {
        if let Some(param) = take(name) {
            fields.push((param, value));
        }
    }
    for (name, value) in head.forwarded() {
        if let Some(param) = take(name.as_bytes()) {
            fields.push((param, value));
        }
    }
    // Stable: repeated fields keep their order when joined.
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    let mut i = 0;
    while i < fields.len() {
        let name = &fields[i].0;
        let same = fields[i..].iter().take_while(|(n, _)| n == name).count();
        if same == 1 {
            put_name_value(payload, name, fields[i].1);
        } else {
            let separator: &[u8] = if name == b"HTTP_COOKIE" { b"; " } else { b", " };
            let joined = fields[i..i + same]
                .iter()
                .map(|(_, v)| *v)
                .collect::<Vec<_>>()
                .join(separator);
            put_name_value(payload, name, &joined);
        }
        i += same;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(front: Option<&str>) -> FastCgi {
        FastCgi {
            document_root: "/srv".into(),
            index: "index.php".into(),
            front_controller: front.map(Into::into),
            split_path: ".php".into(),
            params: Vec::new(),
            max_connections: 1,
        }
    }

    #[test]
    #[rustfmt::skip]
    fn paths_split_into_script_and_path_info() {
        // path, front controller, SCRIPT_NAME, PATH_INFO, why
        let rows: &[(&str, Option<&str>, &str, &str, &str)] = &[
            ("/index.php", None, "/index.php", "", "a script"),
            (
                "/shop/cart.php/extra",
                None,
                "/shop/cart.php",
                "/extra",
                "PATH_INFO after the script",
            ),
            (
                "/a.php/b.php/c",
                None,
                "/a.php",
                "/b.php/c",
                "the first script segment wins",
            ),
            (
                "/shop/",
                None,
                "/shop/index.php",
                "",
                "a directory runs its index",
            ),
            ("/", None, "/index.php", "", "the root runs the index"),
            ("/about", None, "", "", "no script, not a directory: not asked"),
            ("/robots.txt", None, "", "", "a static file is not PHP-FPM's"),
            ("/uploads/x.phar/", None, "", "", "a file as a directory: PHP-FPM would run it"),
            ("/v1.2/", None, "", "", "a dot in a directory: taken for a file"),
            ("/.php", None, "", "", "a bare extension names no script"),
            (
                "/users/42",
                Some("/index.php"),
                "/index.php",
                "",
                "the front controller",
            ),
            ("/", Some("/index.php"), "/index.php", "", "the root too"),
            (
                "/blog/",
                Some("/app.php"),
                "/app.php",
                "",
                "a directory too",
            ),
            (
                "/old.php",
                Some("/index.php"),
                "/old.php",
                "",
                "a named script still runs",
            ),
        ];
        for (path, front, name, info, why) in rows {
            let got = script(&settings(*front), path.as_bytes()).map(|s| {
                (
                    String::from_utf8(s.name).unwrap(),
                    String::from_utf8(s.path_info).unwrap(),
                )
            });
            let want = (!name.is_empty()).then(|| (name.to_string(), info.to_string()));
            assert_eq!(got, want, "{path}: {why}");
        }
    }

    #[test]
    fn paths_are_decoded_to_bytes_and_decoded_dot_segments_refused() {
        assert_eq!(
            decode_path("/caf%C3%A9.php").unwrap(),
            "/café.php".as_bytes()
        );
        assert_eq!(
            decode_path("/%FF.php").unwrap(),
            b"/\xff.php",
            "not UTF-8: still sent"
        );
        assert_eq!(decode_path("/a%2Fb").unwrap(), b"/a/b");
        assert_eq!(decode_path("/50%").unwrap(), b"/50%", "a stray % stays");
        for bad in ["/a%2F..%2Fb", "/..%2Fetc", "/a/%2E%2E/x", "/x%2F."] {
            assert_eq!(decode_path(bad), Err(ScriptPathError::DotSegment), "{bad}");
        }
    }

    #[test]
    fn hosts_split_into_name_and_port() {
        assert_eq!(
            split_host(b"shop.test:8080"),
            (&b"shop.test"[..], Some(&b"8080"[..]))
        );
        assert_eq!(split_host(b"shop.test"), (&b"shop.test"[..], None));
        assert_eq!(split_host(b"[::1]:443"), (&b"[::1]"[..], Some(&b"443"[..])));
        assert_eq!(split_host(b"[::1]"), (&b"[::1]"[..], None));
        assert_eq!(split_host(b"x:"), (&b"x:"[..], None));
    }
}
