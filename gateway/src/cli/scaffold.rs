//! `weir module new`: a transform module project in a new folder, outside
//! any workspace, for one of five languages. Each builds as it is with its
//! language's own toolchain (the one line in its README), and passes
//! `weir module test --expect` on its test vectors.
//!
//! The files are in `scaffold/`; `{name}` in them becomes the module's name.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use super::Failure;

#[derive(Clone, Copy, ValueEnum)]
enum Lang {
    Rust,
    C,
    Zig,
    Assemblyscript,
    Wat,
}

#[derive(Args)]
pub(super) struct NewArgs {
    /// The module's name: lowercase letters, digits, `-` and `_`.
    name: String,
    /// The language.
    #[arg(long)]
    lang: Lang,
    /// The folder to create (default: ./NAME). It must not exist, or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Rust: where weir-guest is, as a path: a checkout of Weir, or its
    /// `firmware-sdk/guest` folder.
    #[arg(long, conflicts_with = "sdk_git")]
    sdk: Option<PathBuf>,
    /// Rust: the Git URL of Weir's repository, for weir-guest.
    #[arg(long)]
    sdk_git: Option<String>,
}

const INPUT: &str = include_str!("scaffold/input.jsonl");
const EXPECTED: &str = include_str!("scaffold/expected.jsonl");
const README: &str = include_str!("scaffold/README.md.in");

/// The checkout this binary was built from, if it is still there.
const BUILT_FROM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../firmware-sdk/guest");

pub(super) fn new(args: NewArgs) -> Result<(), Failure> {
    let name = &args.name;
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid || name.len() > 64 {
        return Err(Failure::refused(anyhow::anyhow!(
            "bad module name `{name}`: use a lowercase letter, then lowercase letters, digits, `-` and `_` (at most 64)"
        )));
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Failure::refused(anyhow::anyhow!(
            "{} exists and is not empty: pick another --dir or name",
            dir.display()
        )));
    }
    let fill = |t: &str| t.replace("{name}", name);
    let wasm_stem = name.replace('-', "_");
    let (lang, source, build, wasm, notes, files): (
        _,
        _,
        String,
        String,
        &str,
        Vec<(&str, String)>,
    ) = match args.lang {
        Lang::Rust => {
            let dependency = rust_dependency(&args)?;
            (
                "Rust",
                "src/lib.rs",
                "cargo build --release".into(),
                format!("target/wasm32-unknown-unknown/release/{wasm_stem}.wasm"),
                "The crate is a `cdylib` (a Wasm module) built for `wasm32-unknown-unknown`\n\
                     (`rustup target add wasm32-unknown-unknown`), with the release profile and\n\
                     stack size in its own `Cargo.toml` and `.cargo/config.toml`. rustc's default\n\
                     1 MiB stack would make every instance 17 pages or more, which a\n\
                     `memory = \"1 MiB\"` limit refuses: this one is 32 KiB. Each `log!` line\n\
                     adds its formatting code to the module (a few KB for the first).",
                vec![
                    (
                        "Cargo.toml",
                        fill(include_str!("scaffold/Cargo.toml.in"))
                            .replace("{dependency}", &dependency),
                    ),
                    (
                        ".cargo/config.toml",
                        include_str!("scaffold/config.toml").into(),
                    ),
                    ("src/lib.rs", fill(include_str!("scaffold/lib.rs"))),
                    (".gitignore", "/target\nCargo.lock\n".into()),
                ],
            )
        }
        Lang::C => (
            "C",
            "transform.c",
            format!(
                "clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -Wl,-z,stack-size=16384 -o {name}.wasm transform.c"
            ),
            format!("{name}.wasm"),
            "Freestanding, with no libc (`-nostdlib`), and a 16 KiB stack instead of\n\
                 wasm-ld's 64 KiB (Debian: `apt-get install clang lld`). For printf and\n\
                 friends, build with `--target=wasm32-wasi -mexec-model=reactor` against\n\
                 wasi-libc and grant `log` (ABI.md, the WASI subset).",
            vec![("transform.c", fill(include_str!("scaffold/transform.c")))],
        ),
        Lang::Zig => (
            "Zig",
            "transform.zig",
            format!(
                "zig build-exe transform.zig -target wasm32-freestanding -O ReleaseSmall -fno-entry -rdynamic --stack 16384 -femit-bin={name}.wasm"
            ),
            format!("{name}.wasm"),
            "Zig 0.13 (`pip install ziglang==0.13.0`, then `python3 -m ziglang` in place of\n\
                 `zig`). `-fno-entry -rdynamic`: no `_start`, and every `export fn` exported;\n\
                 `--stack 16384`: a 16 KiB stack. With `-target wasm32-wasi\n\
                 -mexec-model=reactor` the standard library prints through WASI (grant `log`).",
            vec![
                (
                    "transform.zig",
                    fill(include_str!("scaffold/transform.zig")),
                ),
                (".gitignore", ".zig-cache/\n*.wasm.o\n".into()),
            ],
        ),
        Lang::Assemblyscript => (
            "AssemblyScript",
            "assembly/index.ts",
            "npm install && npm run build".into(),
            format!("{name}.wasm"),
            "`--runtime stub`: no garbage collector, so allocate nothing per record (use\n\
                 static `memory.data`); `--use abort=`: no `env.abort` import, an abort traps;\n\
                 `--stackSize 16384`: a 16 KiB stack. Needs Node.js 18 or later.",
            vec![
                (
                    "package.json",
                    fill(include_str!("scaffold/package.json.in")),
                ),
                ("assembly/index.ts", fill(include_str!("scaffold/index.ts"))),
                (".gitignore", "node_modules/\n".into()),
            ],
        ),
        Lang::Wat => (
            "WebAssembly text",
            "transform.wat",
            "weir module inspect transform.wat".into(),
            "transform.wat".into(),
            "Nothing to build: weir reads the text itself (`module test`, `module pack\n\
                 --wasm transform.wat`, a stage's `module`); the line above checks it.",
            vec![(
                "transform.wat",
                fill(include_str!("scaffold/transform.wat")),
            )],
        ),
    };
    let readme = fill(README)
        .replace("{lang}", lang)
        .replace("{source}", source)
        .replace("{build}", &build)
        .replace("{wasm}", &wasm)
        .replace("{notes}", notes);
    let mut all = files;
    all.push(("README.md", readme));
    all.push(("input.jsonl", INPUT.into()));
    all.push(("expected.jsonl", EXPECTED.into()));
    for (path, text) in &all {
        write(&dir.join(path), text)?;
    }
    println!("{} module `{name}` in {}", lang, dir.display());
    println!("  build: (cd {} && {build})", dir.display());
    println!(
        "  test:  (cd {} && weir module test {wasm} --input input.jsonl --expect expected.jsonl)",
        dir.display()
    );
    Ok(())
}

/// The `weir-guest` line of the Rust scaffold's Cargo.toml.
fn rust_dependency(args: &NewArgs) -> Result<String, Failure> {
    if let Some(url) = &args.sdk_git {
        return Ok(format!("weir-guest = {{ git = {url:?} }}"));
    }
    let path = match &args.sdk {
        Some(p) if p.join("firmware-sdk/guest/Cargo.toml").exists() => p.join("firmware-sdk/guest"),
        Some(p) if p.join("Cargo.toml").exists() => p.clone(),
        Some(p) => {
            return Err(Failure::refused(anyhow::anyhow!(
                "--sdk {}: no weir-guest there; give a checkout of Weir or its firmware-sdk/guest folder",
                p.display()
            )));
        }
        None if Path::new(BUILT_FROM).join("Cargo.toml").exists() => PathBuf::from(BUILT_FROM),
        None => {
            return Err(Failure::refused(anyhow::anyhow!(
                "the Rust module needs the weir-guest crate: pass --sdk PATH (a checkout of Weir) or --sdk-git URL (Weir's repository)"
            )));
        }
    };
    let path = path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    Ok(format!(
        "weir-guest = {{ path = {:?} }}",
        path.display().to_string()
    ))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if path.exists() {
        bail!("{} exists", path.display());
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
