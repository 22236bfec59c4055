//! One call that runs a plugin process the way InfraKit's own plugins run: logs initialised, the
//! socket where discovery looks for it, bound before any slow start-up work, SIGTERM and SIGINT
//! handled, the socket file removed on exit.
//!
//! ```no_run
//! use infrakit_sdk::prelude::*;
//! # struct MyCloud;
//! # #[async_trait]
//! # impl InstancePlugin for MyCloud {
//! #     async fn validate(&self, _: &Value) -> Result<()> { Ok(()) }
//! #     async fn provision(&self, _: Spec) -> Result<InstanceId> { Ok("i-1".into()) }
//! #     async fn label(&self, _: &str, _: Tags) -> Result<()> { Ok(()) }
//! #     async fn destroy(&self, _: &str, _: DestroyContext) -> Result<()> { Ok(()) }
//! #     async fn describe_instances(&self, _: &Tags, _: bool) -> Result<Vec<Description>> { Ok(vec![]) }
//! # }
//! fn main() -> std::process::ExitCode {
//!     infrakit_sdk::run::instance(MyCloud, RunOptions::new("instance-mycloud"))
//! }
//! ```
//!
//! Not for embedding a plugin in a bigger program: use [`crate::rpc::server::Server`] there.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::discovery;
use crate::logging::{self, Output};
use crate::rpc::server::{Plugins, Server};
use crate::spi::flavor::FlavorPlugin;
use crate::spi::group::GroupPlugin;
use crate::spi::instance::InstancePlugin;
use crate::Result;

/// The environment variable that overrides the socket path (as for `infrakit plugin serve`).
pub const SOCKET_ENV: &str = "INFRAKIT_PLUGIN_SOCKET";

/// How to run one plugin process.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The name others find the plugin by (`instance-mycloud`); letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The socket path; `None`: `$INFRAKIT_PLUGIN_SOCKET`, else `<plugins dir>/<name>.sock`.
    pub socket: Option<PathBuf>,
    /// The log filter (`debug`, `info,my_plugin=trace`); `None`: `$INFRAKIT_LOG`, else
    /// `$RUST_LOG`, else `info`.
    pub log_level: Option<String>,
    /// Whether to install the log subscriber (off when the program installs its own).
    pub logging: bool,
}

impl RunOptions {
    pub fn new(name: impl Into<String>) -> RunOptions {
        RunOptions {
            name: name.into(),
            socket: None,
            log_level: None,
            logging: true,
        }
    }

    pub fn socket(mut self, path: impl Into<PathBuf>) -> RunOptions {
        self.socket = Some(path.into());
        self
    }

    pub fn log_level(mut self, filter: impl Into<String>) -> RunOptions {
        self.log_level = Some(filter.into());
        self
    }

    pub fn without_logging(mut self) -> RunOptions {
        self.logging = false;
        self
    }

    /// The socket this plugin will listen on.
    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .or_else(|| {
                std::env::var_os(SOCKET_ENV)
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| discovery::default_socket(&self.name))
    }
}

/// Runs one instance plugin until SIGTERM/SIGINT; the exit code says whether it went well.
pub fn instance(plugin: impl InstancePlugin, options: RunOptions) -> ExitCode {
    main(options, move || async move {
        Ok(Plugins::new().instance(plugin))
    })
}

/// Runs one flavor plugin until SIGTERM/SIGINT.
pub fn flavor(plugin: impl FlavorPlugin, options: RunOptions) -> ExitCode {
    main(
        options,
        move || async move { Ok(Plugins::new().flavor(plugin)) },
    )
}

/// Runs one group plugin until SIGTERM/SIGINT.
pub fn group(plugin: impl GroupPlugin, options: RunOptions) -> ExitCode {
    main(
        options,
        move || async move { Ok(Plugins::new().group(plugin)) },
    )
}

/// The general form: logs set up, the socket bound, then `build` makes the plugins (slow start-up
/// work such as connecting to a cloud belongs here, after the bind, so a Docker engine enabling
/// the plugin sees its socket at once), then they are served until SIGTERM/SIGINT.
///
/// The runtime is tokio's current-thread one, as for InfraKit's own plugins: requests mostly wait
/// on IO, and one thread answers them fastest. Blocking work belongs in
/// `tokio::task::spawn_blocking` (tokio is re-exported as `infrakit_sdk::tokio`).
pub fn main<F, Fut>(options: RunOptions, build: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Plugins>>,
{
    if options.logging {
        logging::init(options.log_level.as_deref(), "info", Output::Plugin);
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(crate::Error::from)
        .and_then(|runtime| runtime.block_on(serve(&options, build)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if options.logging {
                tracing::error!("{e}");
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// As [`main`], inside a runtime the caller owns, without touching the logs.
pub async fn serve<F, Fut>(options: &RunOptions, build: F) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Plugins>>,
{
    let name = &options.name;
    discovery::validate_name(name)?;
    let socket = options.socket_path();
    let server =
        Server::bind(&socket).map_err(|e| e.context(format!("cannot serve plugin '{name}'")))?;
    let plugins = build()
        .await
        .map_err(|e| e.context(format!("plugin '{name}' failed to start")))?;
    tracing::info!(name = %name, socket = %socket.display(), "plugin ready");
    server.serve(plugins).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_socket_wins() {
        let o = RunOptions::new("instance-x").socket("/tmp/x.sock");
        assert_eq!(o.socket_path(), PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn the_default_socket_is_where_discovery_looks() {
        // Only when the environment does not override it (the test runner's own environment).
        if std::env::var_os(SOCKET_ENV).is_some() {
            return;
        }
        let o = RunOptions::new("instance-x");
        assert_eq!(o.socket_path(), discovery::default_socket("instance-x"));
        assert!(o.socket_path().ends_with("instance-x.sock"));
    }

    #[tokio::test]
    async fn a_bad_name_is_refused_before_anything_is_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("x.sock");
        let o = RunOptions::new("../escape").socket(&socket);
        let e = serve(&o, || async { Ok(Plugins::new()) })
            .await
            .expect_err("a path is not a name");
        assert!(e.message.contains("invalid plugin name"), "{e}");
        assert!(!socket.exists());
    }
}
