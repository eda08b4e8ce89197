//! A throwaway `redis-server` for the cluster-mode tests: no persistence, a free loopback
//! port, `DEBUG` allowed from loopback (to stall it on purpose), killed on drop.
//! (tests/cluster.rs keeps its own, durable one: it restarts Redis on the same data.)

use super::{wait_until, PATIENCE};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};

/// A `redis-server` without persistence whose `DEBUG` command is allowed from loopback,
/// killed on drop.
pub struct Redis {
    child: Child,
    /// Where it listens (127.0.0.1).
    pub port: u16,
}

impl Redis {
    /// Starts it and waits until it listens.
    pub fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--bind", "127.0.0.1", "--enable-debug-command", "local"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start redis-server ({err}): install it (apt-get install redis-server); .ci/run does")
            });
        let up = wait_until(PATIENCE, || TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "redis-server did not listen on {port}");
        Redis { child, port }
    }

    /// `redis://127.0.0.1:PORT`, for `--cluster-redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command and returns the first line of its reply (RESP).
    pub fn command(&self, args: &[&str]) -> String {
        Redis::command_on(self.port, args)
    }

    /// [`Redis::command`] on a port (for a thread that does not own the server).
    pub fn command_on(port: u16, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect redis");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            if stream.read(&mut byte).unwrap_or(0) == 0 {
                break;
            }
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
