//! Generates the Rust code for `hostshift.v1` at build time.
//!
//! We use build-time generation with the protoc that `protoc-bin-vendored` ships inside a
//! crates.io package, rather than checked-in generated code: a fresh clone builds with `cargo
//! build` alone, there is no generated file that can drift from the `.proto`, and reviewers read
//! the contract in one place. The cost is ~2 s of build time.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["hostshift/v1/agent.proto", "hostshift/v1/hooks.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &protos, &["."])?;
    Ok(())
}
