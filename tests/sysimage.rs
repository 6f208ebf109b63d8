//! The pool sysimage, built for real (tests/common/sysimage.rs: once for
//! every test process that needs it, ~3-5 min on a busy 2-core machine,
//! then kept in target/test-sysimage while its sources are unchanged): a
//! copy of the worker with the example project's local package `Greeting`
//! compiled in. Then: the real master serves pages from it; the worker's own test suite runs against the image's modules; a
//! stale image is refused with a reason; a project page finds its package
//! in the image without precompiling anything.
//!
//! The master is pointed at the image with the `sysimage` setting; the
//! worker's own tests run on it through a one-line julia wrapper (`julia -J
//! IMAGE "$@"`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::fcgi::{self, Request};
use common::sysimage::{fixture, Fixture};
use julia_fcgi::sysimage::{self, Image, Inputs};

fn page(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_image_serves_pages() {
    let f = fixture();
    eprintln!(
        "worker ready: {:.2} s on the image, {:.2} s from source (in the build)",
        f.image_ready.as_secs_f64(),
        f.source_ready.as_secs_f64()
    );
    let d = f.daemon_on_image(1, "");
    let pages = d.dir.path();
    let addr = &d.addr;

    // A CGI page, twice (compiled once, then called).
    let hello = page(
        pages,
        "hello.jl",
        "print(\"Content-Type: text/plain\\r\\n\\r\\nhi \", ENV[\"QUERY_STRING\"])\n",
    );
    for q in ["a=1", "b=2"] {
        let r = fcgi::get(addr, &hello, q);
        assert_eq!((r.status(), r.body_text()), (200, format!("hi {q}")));
    }
    // A handler page keeps its top level between requests.
    let handler = page(
        pages,
        "handler.jl",
        "const N = Ref(0)\nhandle() = print(\"Content-Type: text/plain\\r\\n\\r\\n\", N[] += 1)\n",
    );
    assert_eq!(fcgi::get(addr, &handler, "").body_text(), "1");
    assert_eq!(fcgi::get(addr, &handler, "").body_text(), "2");
    // atexit hooks run at the end of their request, into its response.
    let atexit = page(
        pages,
        "atexit.jl",
        "print(\"Content-Type: text/plain\\r\\n\\r\\nbody\")\natexit(() -> print(\" and hook\"))\n",
    );
    assert_eq!(fcgi::get(addr, &atexit, "").body_text(), "body and hook");
    // ENV is the request's, and nothing of it reaches the next request.
    let env = page(
        pages,
        "env.jl",
        "print(\"Content-Type: text/plain\\r\\n\\r\\n\", get(ENV, \"LEFT\", \"none\"), \" \", \
         haskey(ENV, \"JULIA_FCGI_CONTROL_FD\"))\nENV[\"LEFT\"] = \"over\"\n",
    );
    assert_eq!(fcgi::get(addr, &env, "").body_text(), "none false");
    assert_eq!(fcgi::get(addr, &env, "").body_text(), "none false");
    // Two requests on one kept connection.
    let mut conn = fcgi::connect(addr);
    for (id, q) in [(1u16, "k=1"), (2, "k=2")] {
        let mut req = Request::get(&hello, q);
        req.id = id;
        req.keep_conn = true;
        conn.write_all(&req.encode()).unwrap();
        let r = fcgi::read_response(&mut *conn, id);
        assert_eq!(r.body_text(), format!("hi {q}"));
    }
    drop(conn);
    // A throwing page: a 500, the exception in the log, the worker lives on.
    let throws = page(
        pages,
        "throws.jl",
        "error(\"thrown from the image test\")\n",
    );
    assert_eq!(fcgi::get(addr, &throws, "").status(), 500);
    d.wait_for_log("thrown from the image test", Duration::from_secs(10));
    assert_eq!(fcgi::get(addr, &hello, "after=1").body_text(), "hi after=1");
}

#[test]
fn a_project_package_comes_from_the_image() {
    let f = fixture();
    let d = f.daemon_on_image(1, "preload = [\"Greeting\"]\n");
    let r = fcgi::get(&d.addr, &f.project.join("greet.jl"), "image");
    assert_eq!(r.status(), 200, "{}", r.body_text());
    assert!(r.body_text().contains("image"), "{}", r.body_text());
    // Compiled into the image: nothing was precompiled into the depot.
    let compiled = f.depot.join("compiled");
    let cached: Vec<_> = common::files_under(&compiled)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("Greeting"))
        .collect();
    assert!(cached.is_empty(), "Greeting was precompiled: {cached:?}");
    assert!(
        !d.log_text().contains("could not be loaded"),
        "{}",
        d.log_text()
    );
}

#[test]
fn the_worker_tests_pass_on_the_image() {
    let f = fixture();
    let out = std::process::Command::new(&f.image_julia)
        .args(["--startup-file=no", "--color=no"])
        .arg(f.root.join("julia/test/runtests.jl"))
        // Worker processes the tests start run on the image too.
        .env("JULIA", &f.image_julia)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "runtests.jl on the image failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("from the pool sysimage"), "{stdout}");
}

/// A second image record of the same build, for a worker or a package
/// copied to where it may be changed: fits until the copy changes.
fn twin(f: &Fixture, name: &str) -> (PathBuf, PathBuf) {
    let dir = std::fs::canonicalize(f.scratch.path()).unwrap().join(name);
    common::copy_dir(&f.root.join("julia"), &dir.join("julia"));
    common::copy_dir(&f.project, &dir.join("project"));
    let image = dir.join("sysimage.so");
    std::fs::copy(&f.image, &image).unwrap();
    let mut m = Image::check(&f.image, &f.inputs()).unwrap().metadata;
    m.worker.dir = dir.join("julia");
    for file in &mut m.package_files {
        if let Ok(rel) = file.path.strip_prefix(&f.project) {
            file.path = dir.join("project").join(rel);
        }
    }
    m.image = sysimage::metadata::FileStamp::of(&image).unwrap();
    m.write(&sysimage::metadata_path(&image)).unwrap();
    (dir, image)
}

/// Why a twin of the image, which fits its copy of the worker and project,
/// is refused once `file` (under the twin) has `more` appended.
fn refused_after_change(f: &Fixture, name: &str, file: &str, more: &str) -> String {
    let (dir, image) = twin(f, name);
    let inputs = Inputs::new(
        &common::julia(),
        &dir.join("julia/worker.jl"),
        &["Greeting".into()],
        &f.env,
    );
    assert!(Image::check(&image, &inputs).is_ok());
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text + more).unwrap();
    Image::check(&image, &inputs).unwrap_err().why
}

#[test]
fn a_stale_image_is_refused() {
    let f = fixture();
    assert!(Image::check(&f.image, &f.inputs()).is_ok());

    // Another julia than the one it was built for.
    let other = Inputs {
        julia: f.image_julia.clone(),
        ..f.inputs()
    };
    let why = Image::check(&f.image, &other).unwrap_err().why;
    assert!(why.contains("built for julia 1."), "{why}");

    // A worker source changed since the build.
    let why = refused_after_change(f, "stale-worker", "julia/src/Env.jl", "\n# changed\n");
    assert!(
        why.contains("worker changed") && why.contains("src/Env.jl"),
        "{why}"
    );

    // The package compiled into it changed.
    let why = refused_after_change(
        f,
        "stale-package",
        "project/Greeting/src/Greeting.jl",
        "\nnewfunction() = 1\n",
    );
    assert!(
        why.contains("a package changed") && why.contains("Greeting.jl"),
        "{why}"
    );

    // Other packages asked for.
    let inputs = Inputs {
        packages: vec![],
        ..f.inputs()
    };
    assert!(Image::check(&f.image, &inputs).is_err());
}

#[test]
fn the_master_uses_a_valid_image_and_refuses_a_stale_one() {
    let f = fixture();
    let d = f.daemon(
        &common::julia(),
        1,
        &format!(
            "sysimage = {:?}\nsysimage_packages = [\"Greeting\"]\n",
            f.image.display().to_string()
        ),
    );
    d.wait_for_log(
        "workers start from the pool sysimage",
        Duration::from_secs(5),
    );
    let r = fcgi::get(&d.addr, &f.project.join("greet.jl"), "wired");
    assert_eq!(r.status(), 200);
    drop(d);

    // An image recorded for another copy of the worker.
    let (_, image) = twin(f, "stale-wired");
    let d = f.daemon(
        &common::julia(),
        1,
        &format!(
            "sysimage = {:?}\nsysimage_packages = [\"Greeting\"]\n",
            image.display().to_string()
        ),
    );
    let line = d.wait_for_log("not used", Duration::from_secs(5));
    assert!(line.contains("start from source"), "{line}");
    drop(d);

    // Turned off: it says so, and the workers serve from source.
    let d = f.daemon(&common::julia(), 1, "sysimage = \"off\"\n");
    d.wait_for_log(
        "workers start from source: sysimage = \"off\"",
        Duration::from_secs(5),
    );
    let r = fcgi::get(&d.addr, &f.project.join("greet.jl"), "unwired");
    assert_eq!(r.status(), 200);
}
