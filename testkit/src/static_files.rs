//! A real, normalising static file server as an upstream: Python's
//! http.server (`.ci/run` installs python3 before the tests).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `python3 -m http.server` on an ephemeral loopback port, serving a fresh
/// directory that holds `files` (relative path, content). Like most static
/// servers it decodes `%XX` (including `%2F`) and resolves `..` before
/// opening a file, which is what makes it the upstream to test path
/// normalisation against. Killed when dropped.
pub struct StaticFiles {
    child: Child,
    pub addr: SocketAddr,
    _root: tempfile::TempDir,
}

impl StaticFiles {
    pub fn start(files: &[(&str, &str)]) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        for (file, text) in files {
            let path = root.path().join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, text).expect("write");
        }
        let child = Command::new("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(root.path())
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server starts");
        // Owned by the guard from here on, so a failed start still kills it.
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            _root: root,
        };
        let stdout = server.child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // "Serving HTTP on 127.0.0.1 port 41235 (http://127.0.0.1:41235/) ..."
        let banner = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("http.server prints where it listens");
        let port: u16 = banner
            .split(" port ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected http.server banner {banner:?}"));
        server.addr.set_port(port);
        server
    }
}

impl Drop for StaticFiles {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
