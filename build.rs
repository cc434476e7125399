//! Generates the C header from `src/ffi` with cbindgen.
//!
//! The header always goes to `OUT_DIR` (a unit test compares it with the checked-in copy).
//! `include/nanopix_sync.h` is written only when `NANOPIX_SYNC_WRITE_HEADER=1`, so a plain
//! `cargo build` never changes the source tree.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=NANOPIX_SYNC_WRITE_HEADER");
    match generate() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: generating the C header: {message}");
            ExitCode::FAILURE
        }
    }
}

fn generate() -> Result<(), String> {
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).map_err(|e| e.to_string())?;
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/ffi/mod.rs"))
        .generate()
        .map_err(|e| e.to_string())?;
    write(&bindings, &out_dir.join("nanopix_sync.h"))?;
    if std::env::var("NANOPIX_SYNC_WRITE_HEADER").as_deref() == Ok("1") {
        write(&bindings, &crate_dir.join("include/nanopix_sync.h"))?;
    }
    Ok(())
}

fn write(bindings: &cbindgen::Bindings, path: &Path) -> Result<(), String> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    }
    bindings.write_to_file(path);
    Ok(())
}
