//! The checked-in CRD is what the Rust types generate.

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
