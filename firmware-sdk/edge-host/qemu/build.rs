//! Puts memory.x where the linker finds it, and the W1 modules' folder in
//! WEIR_MODULES_DIR (default: the workspace's target/modules).
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::copy("memory.x", out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    let modules = std::env::var("WEIR_MODULES_DIR").unwrap_or_else(|_| {
        let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
        here.join("../../../target/modules").display().to_string()
    });
    for m in [
        "weir_w1_range_filter",
        "weir_w1_enrich",
        "weir_w1_moving_average",
    ] {
        let path = PathBuf::from(&modules).join(format!("{m}.wasm"));
        assert!(
            path.exists(),
            "{} missing: build the modules first (cargo xtask modules)",
            path.display()
        );
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rustc-env=WEIR_MODULES_DIR={modules}");
    println!("cargo:rerun-if-env-changed=WEIR_MODULES_DIR");
}
