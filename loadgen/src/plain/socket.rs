//! Outgoing TCP connections: non-blocking connect with TCP_NODELAY, optionally bound to one
//! of several loopback source addresses (IP_BIND_ADDRESS_NO_PORT) so that more than ~28k
//! connections to one server port fit in the ephemeral port range.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

/// Most source addresses for `--src-ips` (127.0.0.1 ..= 127.0.0.254).
pub const SOURCE_IPS_MAX: u32 = 254;

/// Source address for connection `index` when spreading over `count` loopback addresses.
pub fn source_ip(index: usize, count: u32) -> Ipv4Addr {
    let host = 1 + (index as u64 % u64::from(count.clamp(1, SOURCE_IPS_MAX))) as u8;
    Ipv4Addr::new(127, 0, 0, host)
}

/// Starts a non-blocking connect to `addr`, bound to `source` when given. Completion is
/// reported by writability; check [`mio::net::TcpStream::take_error`] then.
pub fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let (Some(source), SocketAddr::V4(_)) = (source, addr) {
        set_bind_address_no_port(&socket)?;
        socket.bind(&SocketAddrV4::new(source, 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(error) => return Err(error),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

/// Lets the kernel pick the port at connect time (per destination), not at bind time.
fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let enable: libc::c_int = 1;
    // SAFETY: the fd is owned by `socket` and open; the option value is a valid c_int
    // living on the stack for the duration of the call, and its size is passed exactly.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Blocking connect used before a run to fail fast (exit 2) on an unreachable target.
pub fn probe(addr: SocketAddr, timeout: std::time::Duration) -> io::Result<()> {
    std::net::TcpStream::connect_timeout(&addr, timeout).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_source_ips() {
        assert_eq!(source_ip(0, 3), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(2, 3), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_ip(3, 3), Ipv4Addr::new(127, 0, 0, 1));
    }

    #[test]
    fn connects_from_a_chosen_source() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _stream = connect(addr, Some(Ipv4Addr::new(127, 0, 0, 2))).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), Ipv4Addr::new(127, 0, 0, 2));
    }
}
