//! Helpers shared by the integration tests that run `weir serve`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `weir serve`, its stdout lines and stderr collected as they come.
pub struct Serve {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    log: Arc<Mutex<String>>,
}

impl Serve {
    pub fn start(config: &Path) -> Serve {
        Serve::start_with(config, &[])
    }

    /// Start with extra arguments for `weir serve`.
    pub fn start_with(config: &Path, extra: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .args(extra)
            .env("WEIR_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(serde_json::from_str(&line).unwrap());
            }
        });
        let g = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                g.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Serve { child, lines, log }
    }

    /// Wait (bounded) until `n` output lines arrived; returns them all.
    pub fn wait_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.lines.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The output lines so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().clone()
    }

    /// SIGKILL: no chance to flush or acknowledge.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait for a clean exit, return the log.
    pub fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "weir serve exits cleanly on SIGTERM: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Serve {
    /// A test that fails before `stop` must not leave weir running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto broker on 127.0.0.1, stopped (by PID) when dropped.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
}

impl Mosquitto {
    /// Start one on `port`, persisting sessions in `dir`.
    pub fn start(dir: &Path, port: u16) -> Mosquitto {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .args(["-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (cargo xtask setup)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child, port }
    }

    /// Publish `messages` (one per line) with mosquitto_pub.
    pub fn publish(
        &self,
        version: &str,
        qos: u8,
        topic: &str,
        messages: &[String],
        extra: &[&str],
    ) {
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-V",
                version,
                "-q",
                &qos.to_string(),
                "-t",
                topic,
                "-l",
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub is installed");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            for m in messages {
                writeln!(stdin, "{m}").unwrap();
            }
        }
        assert!(child.wait().unwrap().success());
    }

    /// Stop it.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
