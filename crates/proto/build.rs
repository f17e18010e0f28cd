//! Compiles every `.proto` under `proto/crm` with protox (pure Rust, so no system `protoc`),
//! generates prost messages and tonic clients and servers, and writes the descriptor set that
//! server reflection and the gateway's transcoder read.

use std::path::{Path, PathBuf};

fn collect_protos(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, found)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            found.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let mut protos = Vec::new();
    collect_protos(&proto_root.join("crm"), &mut protos)?;
    protos.sort();
    // A directory here makes cargo rescan every file below it, vendored google protos included.
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let file_descriptors = protox::compile(&protos, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("crm_descriptor.bin"),
        prost::Message::encode_to_vec(&file_descriptors),
    )?;

    tonic_prost_build::configure()
        // Maps as BTreeMap so that encoding a message is deterministic: request fingerprints for
        // idempotency hash the encoded request.
        .btree_map(".")
        .compile_fds(file_descriptors)?;
    Ok(())
}
