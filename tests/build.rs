//! Builds every guest module (Rust and C) before the tests compile, so
//! `cargo test` needs no manual step, and tells the test kit where they are.
fn main() {
    let root = xtask::workspace_root();
    for input in xtask::module_inputs(&root) {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    match xtask::build_modules(&root) {
        Ok(dir) => println!("cargo:rustc-env=WEIR_MODULES_DIR={}", dir.display()),
        Err(e) => panic!("cannot build the guest modules: {e}"),
    }
}
