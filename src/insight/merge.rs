//! Several replicas' `/paths` reports as one, and that report as a table.
//!
//! In: [`PathsReport`]s read from each replica.
//! Out: one [`PathsReport`] (pure: [`merge`]) and its text table ([`render_table`]).
//!
//! Space-Saving sketches merge by adding counts. A path one replica did not list may
//! still have been seen there, up to that replica's `floor`: the merged count adds that
//! floor, to both `count` and `error`, so `count` stays an upper bound and
//! `count - error` a lower bound of the true count, as in each replica's own report.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::report::{Class, ClassPaths, PathCount, PathsReport, RoutePaths};

/// The report of all `reports` together, keeping the largest `top` of theirs.
pub fn merge(reports: Vec<PathsReport>) -> PathsReport {
    let top = reports.iter().map(|r| r.top).max().unwrap_or(0);
    let mut replicas = Vec::new();
    // Route → class → the class in each replica that has it.
    let mut routes: BTreeMap<String, (u64, BTreeMap<Class, Vec<ClassPaths>>)> = BTreeMap::new();
    for report in reports {
        replicas.extend(report.replicas);
        for route in report.routes {
            let entry = routes.entry(route.route).or_default();
            entry.0 += route.requests;
            for class in route.classes {
                entry.1.entry(class.class).or_default().push(class);
            }
        }
    }
    let routes = routes
        .into_iter()
        .map(|(route, (requests, classes))| RoutePaths {
            route,
            requests,
            classes: classes
                .into_iter()
                .map(|(class, parts)| merge_class(class, parts, requests, top as usize))
                .collect(),
        })
        .collect();
    PathsReport {
        replicas,
        top,
        routes,
    }
}

fn merge_class(
    class: Class,
    parts: Vec<ClassPaths>,
    route_requests: u64,
    top: usize,
) -> ClassPaths {
    let requests = parts.iter().map(|p| p.requests).sum();
    let mut paths: BTreeMap<String, PathCount> = BTreeMap::new();
    for (i, part) in parts.iter().enumerate() {
        for p in &part.paths {
            let merged = paths.entry(p.path.clone()).or_insert_with(|| {
                // Seen first here: what the replicas before this one may have hidden.
                let hidden: u64 = parts[..i].iter().map(|q| q.floor).sum();
                PathCount {
                    path: p.path.clone(),
                    count: hidden,
                    error: hidden,
                    share: 0.0,
                    last_seen: 0,
                }
            });
            merged.count += p.count;
            merged.error += p.error;
            merged.last_seen = merged.last_seen.max(p.last_seen);
        }
        // Paths listed by earlier replicas but not by this one.
        for merged in paths.values_mut() {
            if !part.paths.iter().any(|p| p.path == merged.path) && part.floor > 0 {
                let listed_before = parts[..i]
                    .iter()
                    .any(|q| q.paths.iter().any(|p| p.path == merged.path));
                if listed_before {
                    merged.count += part.floor;
                    merged.error += part.floor;
                }
            }
        }
    }
    let mut paths: Vec<PathCount> = paths.into_values().collect();
    paths.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.path.cmp(&b.path)));
    let mut floor: u64 = parts.iter().map(|p| p.floor).sum();
    if paths.len() > top {
        floor = floor.max(paths[top].count);
        paths.truncate(top);
    }
    for p in &mut paths {
        p.share = if route_requests == 0 {
            0.0
        } else {
            p.count as f64 / route_requests as f64
        };
    }
    ClassPaths {
        class,
        requests,
        floor,
        paths,
    }
}

/// The report as text: per route a heading with its requests and each class's share,
/// then up to `limit` paths per class. `now` (unix seconds) dates "last seen".
pub fn render_table(report: &PathsReport, limit: usize, now: u64) -> String {
    let mut out = String::new();
    if report.routes.is_empty() {
        out.push_str("no route has had traffic yet\n");
        return out;
    }
    for route in &report.routes {
        let _ = write!(out, "{}  {} requests", route.route, route.requests);
        for class in &route.classes {
            let _ = write!(
                out,
                "  {} {}",
                class.class.as_str(),
                percent(class.requests, route.requests)
            );
        }
        out.push('\n');
        let width = route
            .classes
            .iter()
            .flat_map(|c| c.paths.iter().take(limit))
            .map(|p| p.path.chars().count())
            .max()
            .unwrap_or(4)
            .clamp(4, 80);
        let _ = writeln!(
            out,
            "  {:<8}  {:<width$}  {:>9}  {:>6}  LAST SEEN",
            "CLASS", "PATH", "REQUESTS", "SHARE"
        );
        for class in &route.classes {
            for p in class.paths.iter().take(limit) {
                // `~`: the count may include up to `error` requests of other paths.
                let count = if p.error > 0 {
                    format!("~{}", p.count)
                } else {
                    p.count.to_string()
                };
                let _ = writeln!(
                    out,
                    "  {:<8}  {:<width$}  {:>9}  {:>6}  {}",
                    class.class.as_str(),
                    p.path,
                    count,
                    percent(p.count, route.requests),
                    ago(now.saturating_sub(p.last_seen))
                );
            }
            let hidden = class.paths.len().saturating_sub(limit);
            if hidden > 0 {
                let _ = writeln!(
                    out,
                    "  {:<8}  ({hidden} more; --limit to see them)",
                    class.class.as_str()
                );
            }
        }
        out.push('\n');
    }
    out
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

fn ago(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str, count: u64, error: u64, last_seen: u64) -> PathCount {
        PathCount {
            path: p.into(),
            count,
            error,
            share: 0.0,
            last_seen,
        }
    }

    fn replica(name: &str, floor: u64, paths: Vec<PathCount>, requests: u64) -> PathsReport {
        PathsReport {
            replicas: vec![name.into()],
            top: 2,
            routes: vec![RoutePaths {
                route: "web/shop".into(),
                requests,
                classes: vec![ClassPaths {
                    class: Class::Legacy,
                    requests,
                    floor,
                    paths,
                }],
            }],
        }
    }

    #[test]
    fn two_replicas_merge_into_one_report() {
        // a is not full (floor 0); b is full, its smallest count 3.
        let a = replica("a", 0, vec![path("/x", 5, 0, 10), path("/y", 1, 0, 30)], 6);
        let b = replica("b", 3, vec![path("/x", 4, 0, 20), path("/z", 3, 2, 5)], 10);
        let merged = merge(vec![a, b]);
        assert_eq!(merged.replicas, ["a", "b"]);
        let route = &merged.routes[0];
        assert_eq!(route.requests, 16);
        let class = &route.classes[0];
        assert_eq!(class.requests, 16);
        let rows: Vec<_> = class
            .paths
            .iter()
            .map(|p| (p.path.as_str(), p.count, p.error, p.last_seen))
            .collect();
        // /x: 5 + 4, exact. /y: 1 in a, and up to b's floor 3 unseen in b: 4 (error 3).
        // /z: 3 (error 2) in b, absent from a, which listed every path it saw: 3.
        // Top 2: /x 9, /y 4; /z (3) is dropped and raises the floor to 3.
        assert_eq!(rows, [("/x", 9, 0, 20), ("/y", 4, 3, 30)]);
        assert_eq!(class.floor, 3);
        assert_eq!(class.paths[0].share, 9.0 / 16.0);
    }

    #[test]
    fn routes_and_classes_of_either_replica_are_kept() {
        let mut a = replica("a", 0, vec![path("/x", 1, 0, 1)], 1);
        a.routes[0].route = "web/a".into();
        let b = replica("b", 0, vec![path("/y", 2, 0, 1)], 2);
        let merged = merge(vec![a, b]);
        let names: Vec<_> = merged.routes.iter().map(|r| r.route.as_str()).collect();
        assert_eq!(names, ["web/a", "web/shop"]);
        assert_eq!(merge(Vec::new()).routes, []);
    }

    #[test]
    fn the_table_reads_as_a_migration_status() {
        let mut report = replica(
            "a",
            0,
            vec![path("/old", 3, 0, 95), path("/older", 1, 1, 10)],
            8,
        );
        report.routes[0].classes.push(ClassPaths {
            class: Class::Migrated,
            requests: 4,
            floor: 0,
            paths: vec![path("/new", 4, 0, 100)],
        });
        report.routes[0].requests = 8;
        report.routes[0].classes[0].requests = 4;
        let text = render_table(&report, 1, 100);
        assert_eq!(
            text,
            "web/shop  8 requests  legacy 50.0%  migrated 50.0%\n\
             \x20 CLASS     PATH   REQUESTS   SHARE  LAST SEEN\n\
             \x20 legacy    /old          3   37.5%  5s ago\n\
             \x20 legacy    (1 more; --limit to see them)\n\
             \x20 migrated  /new          4   50.0%  0s ago\n\n"
        );
        assert_eq!(
            render_table(&PathsReport::default(), 5, 0),
            "no route has had traffic yet\n"
        );
    }
}
