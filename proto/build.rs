//! Generates the Rust code for `hostshift.v1` at build time, from every `.proto` file in
//! `hostshift/v1/` (adding a service means adding a file, nothing else).
//!
//! We use build-time generation with the protoc that `protoc-bin-vendored` ships inside a
//! crates.io package, rather than checked-in generated code: a fresh clone builds with `cargo
//! build` alone, there is no generated file that can drift from the `.proto`, and reviewers read
//! the contract in one place. The cost is ~2 s of build time.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "hostshift/v1";
    println!("cargo:rerun-if-changed={dir}");
    let mut protos: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .map(|p| p.display().to_string())
        .collect();
    protos.sort();
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Data chunks are `bytes::Bytes`: they pass from the network to the consumer without a copy.
    config.bytes([".hostshift.v1.Chunk.data"]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &protos, &[".".to_string()])?;
    Ok(())
}
