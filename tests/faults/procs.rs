//! The processes a run drives: `tidings` nodes, and the run's own Redis or
//! NATS server, each stopped, killed and started again on the same port
//! (and, for the hub, the same data directory) as the schedule says.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().map(|a| a.port()).unwrap_or(0)
}

fn wait_listening(addr: SocketAddr, what: &str) -> Result<(), String> {
    for _ in 0..200 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{what} did not start listening on {addr}"))
}

/// One `tidings serve` process.
pub struct Node {
    pub addr: SocketAddr,
    data_dir: PathBuf,
    config: PathBuf,
    sets: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// A node on a free port, with its data in `data_dir`, configured by
    /// the file `config` and `sets` (`key=value`).
    pub fn start(data_dir: &Path, config: &Path, sets: Vec<String>) -> Result<Node, String> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .map_err(|e| format!("{e}"))?;
        let mut node = Node {
            addr,
            data_dir: data_dir.to_owned(),
            config: config.to_owned(),
            sets,
            child: None,
        };
        node.spawn()?;
        Ok(node)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--config")
            .arg(&self.config)
            .arg("--log-level")
            .arg("error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for s in &self.sets {
            cmd.arg("--set").arg(s);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start tidings: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        // The port may still be held by the previous process for a moment.
        let read = BufReader::new(stdout).read_line(&mut line);
        if read.is_err() || !line.starts_with("tidings listening on") {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("tidings did not start on {}: {line:?}", self.addr));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Starts it again, retrying while the port is still being released.
    pub fn restart(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..20 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(last)
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// SIGTERM, and waits for the exit; true when it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// SIGKILL: nothing is cleaned up or flushed beyond what was committed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which shared engine a run's nodes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Disk,
    Memory,
    Redis,
    Nats,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Disk => "disk",
            Engine::Memory => "memory",
            Engine::Redis => "redis",
            Engine::Nats => "nats",
        }
    }

    fn binary(self) -> Option<&'static str> {
        match self {
            Engine::Redis => Some("redis-server"),
            Engine::Nats => Some("nats-server"),
            _ => None,
        }
    }

    /// Why this engine cannot run here, if it cannot.
    pub fn unavailable(self) -> Option<String> {
        let binary = self.binary()?;
        match Command::new(binary).arg("--version").output() {
            Ok(_) => None,
            Err(e) => Some(format!("{binary} is not installed ({e})")),
        }
    }
}

/// The run's own Redis or NATS server (so that restarting it hurts no one
/// else). Redis keeps nothing on disk: a restart loses everything; NATS
/// keeps JetStream in its directory: a restart loses nothing.
pub struct EngineServer {
    engine: Engine,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl EngineServer {
    pub fn start(engine: Engine) -> Result<EngineServer, String> {
        let mut server = EngineServer {
            engine,
            port: free_port(),
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.engine.name(), self.port)
    }

    pub fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut cmd = match self.engine {
            Engine::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                    .args(["--appendonly", "no", "--dir", &dir]);
                c
            }
            Engine::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &dir]);
                c
            }
            _ => return Ok(()),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.engine.name()))?;
        self.child = Some(child);
        let addr = format!("127.0.0.1:{port}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        wait_listening(addr, self.engine.name())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EngineServer {
    fn drop(&mut self) {
        self.kill();
    }
}
