//! The checked-in CRD is what the Rust types generate, and its YAML reads back as them.

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let generated = fallthrough::run::crd_yaml().unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/fallbackroutes.fallthrough.dev.yaml"
    );
    let checked_in = std::fs::read_to_string(path).unwrap();
    assert!(
        generated == checked_in,
        "crds/fallbackroutes.fallthrough.dev.yaml is out of date: run `cargo run -- crd > crds/fallbackroutes.fallthrough.dev.yaml`"
    );
}

#[test]
fn crd_yaml_reads_back_as_the_crd() {
    use kube::CustomResourceExt;
    let generated = fallthrough::run::crd_yaml().unwrap();
    let read_back: serde_json::Value = serde_saphyr::from_str(&generated).unwrap();
    let crd = serde_json::to_value(fallthrough::api::FallbackRoute::crd()).unwrap();
    assert_eq!(read_back, crd);
}
