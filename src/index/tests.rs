use super::*;
use crate::api::{BackendRef, ServiceRef};

fn spec(primary: &str, fallback: &str) -> FallbackRouteSpec {
    FallbackRouteSpec {
        primary: BackendRef {
            url: Some(primary.into()),
            service: None,
            ..Default::default()
        },
        fallback: BackendRef {
            url: Some(fallback.into()),
            service: None,
            ..Default::default()
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
    assert_eq!(route.fallback.endpoints[0].to_string(), "new.internal:80");
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
        ("ftp://x", "http://"),
        ("fastcgi://x:9000", "fastcgi block"),
        ("unix:relative.sock", "unix:/absolute"),
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
        ..Default::default()
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

#[test]
fn fastcgi_and_tls_blocks_are_checked() {
    use crate::api::{BackendTlsSpec, FastCgiSpec};
    use crate::routes::{Addr, Protocol};
    let fcgi = |root: &str| FastCgiSpec {
        document_root: root.into(),
        ..Default::default()
    };
    let mut s = spec("unix:/run/php/php-fpm.sock", "http://y");
    s.primary.fastcgi = Some(fcgi("/var/www/html/"));
    let route = check(&s).unwrap();
    let Protocol::FastCgi(settings) = &route.primary.protocol else {
        panic!("{:?}", route.primary.protocol)
    };
    assert_eq!(
        settings.document_root, "/var/www/html",
        "trailing slash dropped"
    );
    assert_eq!(settings.index, "index.php");
    assert_eq!(settings.split_path, ".php");
    assert_eq!(settings.max_connections, 5);
    assert_eq!(
        route.primary.endpoints[0].addr,
        Addr::Unix("/run/php/php-fpm.sock".into())
    );
    assert_eq!(
        route.primary.endpoints[0].pool_key(),
        "fastcgi|unix:/run/php/php-fpm.sock"
    );

    let mut s = spec("fastcgi://fpm", "http://y");
    s.primary.fastcgi = Some(fcgi("/srv"));
    let route = check(&s).unwrap();
    assert_eq!(route.primary.name, "fpm:9000", "FastCGI's usual port");

    for (root, front, max, fragment) in [
        ("srv", None, None, "absolute"),
        ("/srv", Some("index.php"), None, "frontController"),
        ("/srv", None, Some(0), "at least 1"),
    ] {
        let mut s = spec("fastcgi://fpm:9000", "http://y");
        s.primary.fastcgi = Some(FastCgiSpec {
            front_controller: front.map(Into::into),
            max_connections: max,
            ..fcgi(root)
        });
        let err = check(&s).unwrap_err().to_string();
        assert!(
            err.contains("primary.fastcgi") && err.contains(fragment),
            "{err}"
        );
    }
    let mut s = spec("http://x:80", "http://y");
    s.primary.fastcgi = Some(fcgi("/srv"));
    assert!(check(&s).unwrap_err().to_string().contains("fastcgi://"));

    // https:// is TLS with or without a block; the name defaults to the url's host.
    let route = check(&spec("https://legacy.example.com", "http://y")).unwrap();
    let Protocol::Https(tls) = &route.primary.protocol else {
        panic!("{:?}", route.primary.protocol)
    };
    assert_eq!(tls.server_name, "legacy.example.com");
    assert_eq!(route.primary.name, "legacy.example.com:443");
    let mut s = spec("https://10.0.0.1", "http://y");
    s.primary.tls = Some(BackendTlsSpec {
        ca_file: Some("ca.pem".into()),
        ..Default::default()
    });
    let err = check(&s).unwrap_err().to_string();
    assert!(
        err.contains("primary.tls") && err.contains("route file"),
        "{err}"
    );
    let mut s = spec("http://x:80", "http://y");
    s.primary.tls = Some(BackendTlsSpec::default());
    assert!(check(&s).unwrap_err().to_string().contains("https://"));
}

#[test]
fn cut_over_prefixes_are_normalised_longest_first_and_exclusive() {
    let mut s = valid();
    s.skip_primary = vec!["/blog/".into(), "/wp-admin/new".into()];
    s.primary_only = vec!["/wp-admin".into()];
    let route = check(&s).unwrap();
    assert_eq!(
        route.cut_over,
        [
            ("/wp-admin/new".to_string(), CutOver::SkipPrimary),
            ("/wp-admin".to_string(), CutOver::PrimaryOnly),
            ("/blog".to_string(), CutOver::SkipPrimary),
        ]
    );
    assert_eq!(
        route.cut_over("/wp-admin/new/x"),
        Some(CutOver::SkipPrimary)
    );
    assert_eq!(
        route.cut_over("/wp-admin/login"),
        Some(CutOver::PrimaryOnly)
    );
    assert_eq!(route.cut_over("/blogger"), None, "segment-aware");

    for (skip, only, says) in [
        (vec!["blog"], vec![], "not a path prefix"),
        (vec!["/a", "/a/"], vec![], "listed twice"),
        (
            vec!["/a"],
            vec!["/a"],
            "in both skipPrimary and primaryOnly",
        ),
    ] {
        let mut s = valid();
        s.skip_primary = skip.into_iter().map(String::from).collect();
        s.primary_only = only.into_iter().map(String::from).collect();
        let err = check(&s).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn remember_fallbacks_defaults_and_limits() {
    let mut s = valid();
    s.remember_fallbacks = Some(crate::api::RememberFallbacks::default());
    let remember = check(&s).unwrap().remember.unwrap();
    assert_eq!(remember.ttl, Duration::from_secs(3600));
    assert_eq!(remember.max_paths, 10_000);
    for (ttl, max, says) in [
        (
            Some("soon"),
            None,
            "rememberFallbacks.ttl \"soon\": not a duration",
        ),
        (Some("0s"), None, "not a duration"),
        (
            None,
            Some(0),
            "rememberFallbacks.maxPaths \"0\": must be from 1 to 1000000",
        ),
    ] {
        s.remember_fallbacks = Some(crate::api::RememberFallbacks {
            ttl: ttl.map(String::from),
            max_paths: max,
        });
        let err = check(&s).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
}
