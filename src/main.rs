//! The `julia-fcgi` binary: parse, validate, acquire the socket, run the pool.

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser};
use tokio::sync::watch;

use julia_fcgi::cli::Cli;
use julia_fcgi::config::{ListenAddr, Settings};
use julia_fcgi::listen::Listener;
use julia_fcgi::pool::{self, Pool};
use julia_fcgi::{logging, worker};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::resolve(&cli) {
        Ok(settings) => settings,
        // Usage text and exit 2, like clap's own errors, before anything runs.
        Err(e) => Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit(),
    };
    if let Err(e) = logging::init(settings.log_level.as_deref()) {
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit();
    }
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: Settings) -> anyhow::Result<()> {
    if let Some(path) = &settings.compat_socket {
        tracing::warn!(
            "-s {} ignored: workers accept FastCGI connections directly, \
             there is no master-worker socket any more",
            path.display()
        );
    }
    let listener = Listener::acquire(&settings)?;
    if let (
        julia_fcgi::listen::Origin::Bound,
        ListenAddr::Tcp {
            all_interfaces: true,
            addr,
        },
    ) = (&listener.origin, &settings.listen)
    {
        tracing::warn!(
            "listening on every interface ({addr}): anyone who can reach this port can run \
             any .jl file this user can read; prefer 127.0.0.1 or a unix socket"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(settings, listener))
}

async fn serve(settings: Settings, listener: Listener) -> anyhow::Result<()> {
    let listener_fd = Arc::new(listener.fd.try_clone()?);
    let spec = worker::Spec {
        julia: settings.julia.clone(),
        worker_file: settings.worker_file.clone(),
        env: worker_env(&settings),
        listener: listener_fd,
    };
    let options = pool::Options {
        size: settings.workers.get(),
        start_timeout: settings.worker_start_timeout,
        shutdown_grace: settings.shutdown_grace,
        listening_on: listener.description.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(wait_for_stop_signal(stop_tx));
    Pool::new(spec, options).run(stop_rx).await?;
    drop(listener);
    Ok(())
}

/// SIGTERM or SIGINT: stop gracefully. SIGHUP must not kill the master (its
/// default action); reloading is not implemented yet, so it is only logged.
async fn wait_for_stop_signal(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; SIGTERM will kill workers ungracefully");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = hup.recv() => tracing::warn!("SIGHUP ignored: reload is not supported yet"),
        }
    }
    let _ = stop.send(true);
}

/// The workers' whole environment: `julia/INTERFACE.md` lists each variable.
fn worker_env(settings: &Settings) -> Vec<(OsString, OsString)> {
    let pages = &settings.pages;
    let mut env: Vec<(OsString, OsString)> = vec![
        ("HOME".into(), settings.home.clone().into_os_string()),
        (
            "PATH".into(),
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        (
            "JULIA_FCGI_EXTENSIONS".into(),
            pages.extensions.join(",").into(),
        ),
        (
            "JULIA_FCGI_DOC_ROOTS".into(),
            std::env::join_paths(&pages.document_roots).unwrap_or_default(),
        ),
        (
            "JULIA_FCGI_DEV".into(),
            if pages.development { "1" } else { "0" }.into(),
        ),
        (
            "JULIA_FCGI_MAX_PARAMS".into(),
            pages.max_params_bytes.to_string().into(),
        ),
        (
            "JULIA_FCGI_MAX_BODY".into(),
            pages.max_body_bytes.to_string().into(),
        ),
        (
            "JULIA_FCGI_READ_TIMEOUT".into(),
            pages.read_timeout.as_secs_f64().to_string().into(),
        ),
    ];
    for name in [
        "LANG",
        "LC_ALL",
        "JULIA_DEPOT_PATH",
        "JULIA_LOAD_PATH",
        "LD_LIBRARY_PATH",
    ] {
        if let Some(value) = std::env::var_os(name) {
            env.push((name.into(), value));
        }
    }
    env
}
