//! Compiles every `.proto` under `proto/` with protox (pure Rust, so no
//! `protoc` is needed anywhere) and generates prost messages and tonic
//! clients and servers from the result.
//!
//! The encoded descriptor set is also written to `OUT_DIR` so that the
//! gateway can decode requests where it must (consent binding), read the
//! fields marked with custom options (the data subject) and serve
//! reflection.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let root = Path::new("../../proto");

    // The gateway's own services and its agencies'.
    let govbridge = compiler(root, &root.join("govbridge"))?;
    // Written by protox rather than by encoding the prost_types set, which
    // would drop extension options such as `govbridge.options.v1.data_subject`.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("govbridge_descriptor.bin"),
        govbridge.encode_file_descriptor_set(),
    )?;
    generate(&govbridge)?;

    // OTLP, for exporting traces: compiled apart so that reflection and the
    // route table never see it.
    let otlp = compiler(root, &root.join("opentelemetry"))?;
    generate(&otlp)?;
    Ok(())
}

/// Every `.proto` under `dir`, compiled with `root` as the import path.
fn compiler(root: &Path, dir: &Path) -> Result<protox::Compiler, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    collect_protos(dir, &mut files)?;
    files.sort();
    let mut compiler = protox::Compiler::new([root])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)?;
    Ok(compiler)
}

fn generate(compiler: &protox::Compiler) -> std::io::Result<()> {
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(compiler.file_descriptor_set())
}

fn collect_protos(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, files)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    Ok(())
}
