//! Compiles every `.proto` under `proto/` with protox (pure Rust, so no
//! `protoc` is needed anywhere) and generates prost messages and tonic
//! clients and servers from the result.
//!
//! Two kinds of encoded descriptor sets are also written to `OUT_DIR`:
//! the gateway's own services (directory, exchange log, data tracker, and
//! the options the agencies' protos use), which the gateway always knows,
//! and one set per mock agency, which it knows only when a configuration
//! registers them (`[services."X"] descriptor`), as it would any provider's.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let root = Path::new("../../proto");

    let govbridge = root.join("govbridge");
    // Code for every service: the gateway's own, and the agencies' (their
    // clients and the mock servers).
    generate(&compiler(root, std::slice::from_ref(&govbridge))?)?;

    // Descriptor sets, written by protox rather than by encoding the
    // prost_types set, which would drop extension options such as
    // `govbridge.options.v1.data_subject`.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let own = ["audit", "directory", "options", "witness"].map(|dir| govbridge.join(dir));
    std::fs::write(
        out_dir.join("govbridge_descriptor.bin"),
        compiler(root, &own)?.encode_file_descriptor_set(),
    )?;
    for agency in AGENCIES {
        std::fs::write(
            out_dir.join(format!("{agency}.binpb")),
            compiler(root, &[govbridge.join(agency)])?.encode_file_descriptor_set(),
        )?;
    }

    // OTLP, for exporting traces: compiled apart so that reflection and the
    // route table never see it.
    let otlp = compiler(root, &[root.join("opentelemetry")])?;
    generate(&otlp)?;
    Ok(())
}

/// The directories under `proto/govbridge/` of the mock agencies' protos
/// (the benchmark's echo service with them): `src/proto.rs` names each
/// set.
const AGENCIES: [&str; 8] = [
    "azbusiness",
    "aztax",
    "bank",
    "bench",
    "business",
    "civilregistry",
    "consent",
    "tax",
];

/// Every `.proto` under `dirs`, compiled with `root` as the import path.
fn compiler(root: &Path, dirs: &[PathBuf]) -> Result<protox::Compiler, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    for dir in dirs {
        collect_protos(dir, &mut files)?;
    }
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
