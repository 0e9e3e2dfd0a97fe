use super::*;
use crate::api::ServiceRef;

fn spec(primary: &str, fallback: &str) -> FallbackRouteSpec {
    FallbackRouteSpec {
        primary: BackendRef {
            url: Some(primary.into()),
            service: None,
        },
        fallback: BackendRef {
            url: Some(fallback.into()),
            service: None,
        },
        ..Default::default()
    }
}

fn valid() -> FallbackRouteSpec {
    spec("http://127.0.0.1:8080", "http://new.internal")
}

fn check(s: &FallbackRouteSpec) -> Result<Route, InvalidRoute> {
    route_from_spec("web", "shop", s, &Context::files(Timeouts::default())).map(|v| v.route)
}

#[test]
fn defaults_fill_what_the_spec_leaves_out() {
    let route = check(&valid()).unwrap();
    assert_eq!(route.paths, ["/"]);
    assert!(route.hosts.is_empty());
    assert_eq!(route.fallback_on, [404]);
    assert_eq!(route.max_replay_bytes, 1024 * 1024);
    assert_eq!(route.not_found_from, Answerer::Fallback);
    assert!(!route.fallback_on_error);
    assert_eq!(route.fallback.endpoints[0].as_str(), "new.internal:80");
    assert_eq!(route.primary.name, "127.0.0.1:8080");
}

#[test]
fn hosts_are_lowercased_and_wildcards_become_suffixes() {
    let mut s = valid();
    s.hosts = vec!["Shop.Example.com".into(), "*.example.com".into()];
    let route = check(&s).unwrap();
    assert_eq!(
        route.hosts,
        [
            HostMatch::Exact("shop.example.com".into()),
            HostMatch::Wildcard(".example.com".into())
        ]
    );
}

#[test]
fn bad_hosts_are_refused() {
    for bad in [
        "",
        "http://shop",
        "shop:80",
        "a.*.com",
        "*",
        "shop/x",
        "-a.com",
    ] {
        let mut s = valid();
        s.hosts = vec![bad.into()];
        assert_eq!(check(&s), Err(InvalidRoute::BadHost(bad.into())), "{bad}");
    }
}

#[test]
fn paths_are_normalised_and_checked() {
    let mut s = valid();
    s.paths = Some(vec!["/app/".into(), "/".into()]);
    assert_eq!(check(&s).unwrap().paths, ["/app", "/"]);
    s.paths = Some(vec!["app".into()]);
    assert_eq!(check(&s), Err(InvalidRoute::BadPath("app".into())));
    s.paths = Some(vec!["/a?b".into()]);
    assert!(matches!(check(&s), Err(InvalidRoute::BadPath(_))));
    s.paths = Some(vec![]);
    assert_eq!(check(&s), Err(InvalidRoute::NoPaths));
}

#[test]
fn backend_urls_are_checked() {
    for (url, fragment) in [
        ("https://x:443", "https"),
        ("ftp://x", "http://"),
        ("http://x:1/path", "path"),
        ("127.0.0.1:80", "http://"),
    ] {
        let err = check(&spec(url, "http://y")).unwrap_err().to_string();
        assert!(
            err.contains("primary") && err.contains(fragment),
            "{url}: {err}"
        );
    }
}

#[test]
fn service_backends_need_a_cluster() {
    let mut s = valid();
    s.fallback = BackendRef {
        url: None,
        service: Some(ServiceRef {
            name: "py".into(),
            port: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(80),
        }),
    };
    assert_eq!(
        check(&s),
        Err(InvalidRoute::ServiceOutsideCluster("fallback"))
    );
    s.fallback.url = Some("http://x".into());
    assert_eq!(check(&s), Err(InvalidRoute::BackendKind("fallback")));
}

#[test]
fn statuses_replay_limit_and_timeouts_are_checked() {
    let mut s = valid();
    s.fallback_on = Some(vec![404, 200]);
    assert_eq!(check(&s), Err(InvalidRoute::BadStatus(200)));
    s.fallback_on = Some(vec![]);
    assert_eq!(check(&s), Err(InvalidRoute::NoStatuses));
    s.fallback_on = Some(vec![404, 410]);
    assert_eq!(check(&s).unwrap().fallback_on, [404, 410]);

    s.max_replay_bytes = Some(MAX_REPLAY_LIMIT + 1);
    assert!(matches!(check(&s), Err(InvalidRoute::ReplayTooLarge(_))));
    s.max_replay_bytes = None;

    s.timeouts = Some(api::Timeouts {
        connect: Some("250ms".into()),
        response_header: None,
        idle: Some("soon".into()),
    });
    assert!(matches!(
        check(&s),
        Err(InvalidRoute::BadTimeout { field: "idle", .. })
    ));
    s.timeouts.as_mut().unwrap().idle = None;
    let t = check(&s).unwrap().timeouts;
    assert_eq!(t.connect, Duration::from_millis(250));
    assert_eq!(t.response_header, Timeouts::default().response_header);
}
