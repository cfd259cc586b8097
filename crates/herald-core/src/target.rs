//! Which callback targets are private, and so refused unless the operator allows them.
//!
//! The same predicate serves the config-time check on literal IPs and the send-time check
//! on resolved addresses, so the two can never disagree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True for addresses a callback must not reach by default: loopback, private, shared
/// (CGNAT), link-local (which holds the cloud metadata address 169.254.169.254),
/// unique-local (which holds `fd00:ec2::254`), unspecified, broadcast, multicast and
/// IPv4 embedded in IPv6 that is any of these.
pub fn is_private_target(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space, RFC 6598
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || a >= 240 // reserved
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_private_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link local fe80::/10
        || (first & 0xffc0) == 0xfec0 // deprecated site local fec0::/10
        || (ip.segments()[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible ::a.b.c.d
        || (ip.segments()[..2] == [0x64, 0xff9b]) // NAT64 well-known prefix
}

/// True for host names that by definition mean this machine.
pub fn is_local_host_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_documented_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(
                is_private_target(ip.parse().unwrap()),
                "{ip} should be refused"
            );
        }
    }

    #[test]
    fn allows_public_addresses() {
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:4860:4860::8888",
            "1.1.1.1",
        ] {
            assert!(
                !is_private_target(ip.parse().unwrap()),
                "{ip} should be allowed"
            );
        }
    }

    #[test]
    fn localhost_names() {
        assert!(is_local_host_name("localhost"));
        assert!(is_local_host_name("LocalHost."));
        assert!(is_local_host_name("a.localhost"));
        assert!(!is_local_host_name("localhost.example.com"));
    }
}
