use super::*;

fn backend(port: u16) -> Backend {
    let authority: http::uri::Authority = format!("127.0.0.1:{port}").parse().unwrap();
    Backend::new(
        authority.to_string(),
        Protocol::Http,
        [Addr::Tcp(authority)],
    )
}

/// A route in namespace `web` from 127.0.0.1:1 (primary) to 127.0.0.1:2 (fallback).
pub(crate) fn mk_route(name: &str, hosts: &[&str], paths: &[&str]) -> Route {
    Route {
        namespace: "web".into(),
        name: name.into(),
        hosts: hosts
            .iter()
            .map(|h| match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Wildcard(suffix.to_string()),
                None => HostMatch::Exact(h.to_string()),
            })
            .collect(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        primary: backend(1),
        fallback: backend(2),
        fallback_on: vec![404],
        max_replay_bytes: 1024,
        not_found_from: Answerer::Fallback,
        fallback_on_error: false,
        timeouts: Timeouts::default(),
        redirect_to_https: false,
        cut_over: Vec::new(),
        remember: None,
    }
}

fn name_of(table: &RouteTable, host: &str, path: &str) -> Option<String> {
    table
        .lookup(host, path)
        .map(|i| table.route(i).name.clone())
}

#[test]
fn endpoints_are_taken_in_turn() {
    let mut b = backend(1);
    b.endpoints.extend(backend(2).endpoints);
    let picked: Vec<_> = (0..4)
        .map(|n| {
            b.endpoint(n)
                .unwrap()
                .authority()
                .unwrap()
                .port_u16()
                .unwrap()
        })
        .collect();
    assert_eq!(picked, [1, 2, 1, 2]);
    b.endpoints.clear();
    assert_eq!(b.endpoint(0), None);
}

#[test]
fn prefixes_match_whole_segments_only() {
    assert!(prefix_matches("/app", "/app"));
    assert!(prefix_matches("/app", "/app/x"));
    assert!(!prefix_matches("/app", "/apple"));
    assert!(prefix_matches("/", "/anything"));
}

#[test]
fn exact_host_beats_wildcard_beats_any() {
    let (table, conflicts) = RouteTable::build([
        mk_route("any", &[], &["/"]),
        mk_route("wild", &["*.example.com"], &["/"]),
        mk_route("exact", &["shop.example.com"], &["/"]),
    ]);
    assert!(conflicts.is_empty());
    assert_eq!(
        name_of(&table, "shop.example.com", "/x").as_deref(),
        Some("exact")
    );
    assert_eq!(
        name_of(&table, "blog.example.com", "/x").as_deref(),
        Some("wild")
    );
    assert_eq!(
        name_of(&table, "a.b.example.com", "/").as_deref(),
        Some("wild")
    );
    assert_eq!(name_of(&table, "example.com", "/").as_deref(), Some("any"));
    assert_eq!(name_of(&table, "other.org", "/").as_deref(), Some("any"));
}

#[test]
fn longer_wildcard_suffix_wins() {
    let (table, _) = RouteTable::build([
        mk_route("short", &["*.example.com"], &["/"]),
        mk_route("long", &["*.shop.example.com"], &["/"]),
    ]);
    assert_eq!(
        name_of(&table, "eu.shop.example.com", "/").as_deref(),
        Some("long")
    );
    assert_eq!(
        name_of(&table, "blog.example.com", "/").as_deref(),
        Some("short")
    );
}

#[test]
fn host_matching_ignores_case_port_and_trailing_dot() {
    let (table, _) = RouteTable::build([mk_route("shop", &["shop.example.com"], &["/"])]);
    assert!(table.lookup("SHOP.Example.com:8080", "/").is_some());
    assert!(table.lookup("shop.example.com.", "/").is_some());
    assert!(table.lookup("shop.example.org", "/").is_none());
    assert!(
        table.lookup("shop.example.com:", "/").is_some(),
        "empty port"
    );
    assert!(
        table.lookup("shop.example.com:80x", "/").is_none(),
        "not a port"
    );
    let (table, _) = RouteTable::build([mk_route("v6", &["[::1]"], &["/"])]);
    assert!(table.lookup("[::1]:8080", "/").is_some());
    assert!(table.lookup("[::1]", "/").is_some());
}

#[test]
fn longest_path_prefix_wins_within_a_host() {
    let (table, _) = RouteTable::build([
        mk_route("root", &["h"], &["/"]),
        mk_route("api", &["h"], &["/api"]),
        mk_route("v2", &["h"], &["/api/v2"]),
    ]);
    assert_eq!(name_of(&table, "h", "/api/v2/x").as_deref(), Some("v2"));
    assert_eq!(name_of(&table, "h", "/api/v1").as_deref(), Some("api"));
    assert_eq!(name_of(&table, "h", "/apiary").as_deref(), Some("root"));
}

#[test]
fn a_less_specific_host_serves_paths_the_specific_one_lacks() {
    let (table, _) = RouteTable::build([
        mk_route("any", &[], &["/"]),
        mk_route("exact", &["h"], &["/admin"]),
    ]);
    assert_eq!(name_of(&table, "h", "/admin/x").as_deref(), Some("exact"));
    assert_eq!(name_of(&table, "h", "/shop").as_deref(), Some("any"));
}

#[test]
fn no_route_when_nothing_matches() {
    let (table, _) = RouteTable::build([mk_route("a", &["h"], &["/a"])]);
    assert_eq!(table.lookup("h", "/b"), None);
    assert_eq!(table.lookup("other", "/a"), None);
}

#[test]
fn the_first_route_keeps_a_contested_host_and_path() {
    let (table, conflicts) = RouteTable::build([
        mk_route("first", &["h"], &["/shop"]),
        mk_route("second", &["x", "h"], &["/other", "/shop"]),
    ]);
    assert_eq!(table.routes().len(), 1);
    assert_eq!(
        name_of(&table, "x", "/other"),
        None,
        "a rejected route is left out whole"
    );
    assert_eq!(
        conflicts,
        vec![Conflict {
            rejected: "web/second".into(),
            winner: "web/first".into(),
            host: "h".into(),
            path: "/shop".into(),
        }]
    );
    let msg = conflicts[0].to_string();
    assert!(
        msg.contains("web/second") && msg.contains("web/first"),
        "{msg}"
    );
}

#[test]
fn any_host_routes_conflict_on_the_same_path() {
    let (table, conflicts) =
        RouteTable::build([mk_route("a", &[], &["/"]), mk_route("b", &[], &["/"])]);
    assert_eq!(table.routes().len(), 1);
    assert_eq!(conflicts[0].host, "*");
}
