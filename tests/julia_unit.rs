//! The Julia worker's own test suite (`julia/test/runtests.jl`), run here so
//! that one `cargo nextest run` covers both sides.

mod common;

use std::process::Command;

#[test]
fn julia_worker_unit_tests() {
    let script = common::repo().join("julia/test/runtests.jl");
    let out = Command::new(common::julia())
        .arg("--startup-file=no")
        .arg("--color=no")
        .arg(&script)
        .output()
        .expect("run julia");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "julia {} failed ({}):\n{stdout}\n{stderr}",
        script.display(),
        out.status
    );
    eprintln!("{stdout}");
}
