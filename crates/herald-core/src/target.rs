//! Which callback targets are private, and so refused unless the operator allows them.
//!
//! The same predicate serves the config-time check on literal IPs and the send-time check
//! on resolved addresses, so the two can never disagree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True for addresses a callback must not reach by default: loopback, private, shared
/// (CGNAT), link-local (which holds the cloud metadata address 169.254.169.254),
/// unique-local (which holds `fd00:ec2::254`), unspecified, broadcast, multicast, and IPv6
/// addresses that embed an IPv4 address which is any of these: IPv4-mapped, 6to4, Teredo
/// (server or client) and NAT64 `64:ff9b::/96`. IPv4-compatible `::/96`, IPv4-translated
/// `::ffff:0:0/96`, the local-use NAT64 prefix `64:ff9b:1::/48` and the rest of
/// `64:ff9b::/32` are refused whole.
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

/// The IPv4 address held in two 16-bit segments, high one first.
fn v4_in(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4-mapped ::ffff:a.b.c.d: the stack connects to the IPv4 address itself.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_private_v4(v4);
    }
    // IPv4-compatible ::a.b.c.d (also :: and ::1), refused whole even when the IPv4 is
    // public: deprecated since RFC 4291, so no legitimate callback target uses it, and
    // some stacks still route it to the IPv4 address.
    if s[..6] == [0; 6] {
        return true;
    }
    // IPv4-translated ::ffff:0:a.b.c.d (RFC 2765's SIIT, ::ffff:0:0/96), refused whole for
    // the same reason: RFC 6145 dropped it, and a SIIT translator would deliver it to the
    // IPv4 address.
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return true;
    }
    // 6to4 2002::/16: bits 16..48 are the IPv4 the relay delivers to.
    if s[0] == 0x2002 {
        return is_private_v4(v4_in(s[1], s[2]));
    }
    // Teredo 2001:0000::/32: bits 32..64 are the server's IPv4, the last 32 bits the
    // client's, inverted (XOR 0xffffffff); either one is reached through it.
    if s[..2] == [0x2001, 0] {
        return is_private_v4(v4_in(s[2], s[3])) || is_private_v4(v4_in(!s[6], !s[7]));
    }
    if s[..2] == [0x64, 0xff9b] {
        // NAT64 well-known prefix 64:ff9b::/96: the last 32 bits are the IPv4 it
        // translates to.
        if s[2..6] == [0; 4] {
            return is_private_v4(v4_in(s[6], s[7]));
        }
        // The local-use prefix 64:ff9b:1::/48 (RFC 8215) translates to whatever the site
        // chooses, so all of it is site-local; the rest of 64:ff9b::/32 is unassigned and
        // stays refused, as before.
        return true;
    }
    let first = s[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link local fe80::/10
        || (first & 0xffc0) == 0xfec0 // deprecated site local fec0::/10
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

    fn refused(ip: &str) -> bool {
        is_private_target(ip.parse().unwrap())
    }

    fn assert_refused(ips: &[&str]) {
        for ip in ips {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    fn assert_allowed(ips: &[&str]) {
        for ip in ips {
            assert!(!refused(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn v4_private_ranges() {
        assert_refused(&[
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.0",
            "10.255.255.255",
            "172.16.0.0",
            "172.31.255.255",
            "192.168.0.1",
            "169.254.169.254",
            "0.1.2.3",
            "192.0.0.8",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
        ]);
        assert_allowed(&["172.15.255.255", "172.32.0.0", "192.169.0.1", "11.0.0.1"]);
    }

    #[test]
    fn v4_cgnat_edges() {
        assert_allowed(&["100.63.255.255", "100.128.0.0"]);
        assert_refused(&["100.64.0.0", "100.100.100.200", "100.127.255.255"]);
    }

    #[test]
    fn v6_local_ranges() {
        assert_refused(&[
            "::1",
            "::",
            "fc00::1",
            "fdff:ffff::1",
            "fd00:ec2::254",
            "fe80::1",
            "febf:ffff::1",
            "fec0::1",
            "ff02::1",
        ]);
    }

    #[test]
    fn v6_ipv4_mapped() {
        assert_refused(&[
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:100.64.0.1",
        ]);
        assert_allowed(&["::ffff:8.8.8.8", "::ffff:100.128.0.1"]);
    }

    #[test]
    fn v6_ipv4_compatible_refused_whole() {
        // Deprecated; refused even around a public IPv4 (see is_private_v6).
        assert_refused(&[
            "::127.0.0.1",
            "::10.0.0.1",
            "::169.254.169.254",
            "::8.8.8.8",
        ]);
    }

    #[test]
    fn v6_ipv4_translated_refused_whole() {
        // ::ffff:0:a.b.c.d, RFC 2765; refused even around a public IPv4 (see is_private_v6).
        assert_refused(&[
            "::ffff:0:127.0.0.1",
            "::ffff:0:10.0.0.1",
            "::ffff:0:169.254.169.254",
            "::ffff:0:8.8.8.8",
            "::ffff:0:0:0",
        ]);
        // Its neighbours are what they were: mapped (by the IPv4) and ordinary addresses.
        assert_allowed(&["::ffff:8.8.8.8", "::1:ffff:0:808:808"]);
    }

    #[test]
    fn v6_6to4() {
        assert_refused(&[
            "2002:7f00:1::",            // 127.0.0.1
            "2002:a00:1::1",            // 10.0.0.1
            "2002:a9fe:a9fe:1:2:3:4:5", // 169.254.169.254
            "2002:6440:1::",            // 100.64.0.1
            "2002:c0a8:101::",          // 192.168.1.1
        ]);
        assert_allowed(&[
            "2002:0808:0808::",
            "2002:808:808:1:2:3:4:5",
            "2002:643f:ffff::",
        ]);
    }

    #[test]
    fn v6_teredo_server() {
        // Client 8.8.8.8, stored inverted as f7f7:f7f7.
        assert_refused(&[
            "2001:0:7f00:1:8000:f227:f7f7:f7f7",    // server 127.0.0.1
            "2001:0:a00:1:8000:f227:f7f7:f7f7",     // server 10.0.0.1
            "2001:0:a9fe:a9fe:8000:f227:f7f7:f7f7", // server 169.254.169.254
            "2001:0:6440:1:8000:f227:f7f7:f7f7",    // server 100.64.0.1
        ]);
        assert_allowed(&["2001:0:808:808:8000:f227:f7f7:f7f7"]);
    }

    #[test]
    fn v6_teredo_client_is_inverted() {
        // Server 8.8.8.8; the client is the last 32 bits XOR 0xffffffff.
        assert_refused(&[
            "2001:0:808:808:8000:f227:80ff:fffe", // client 127.0.0.1
            "2001:0:808:808:8000:f227:3f57:fefe", // client 192.168.1.1
            "2001:0:808:808:8000:f227:5601:5601", // client 169.254.169.254
            "2001:0:808:808:8000:f227:9bbf:fffe", // client 100.64.0.1
        ]);
        // Read without the XOR this would be 127.0.0.1; inverted it is 128.255.255.254.
        assert_allowed(&["2001:0:808:808:8000:f227:7f00:1"]);
    }

    #[test]
    fn v6_nat64_well_known() {
        assert_refused(&[
            "64:ff9b::7f00:1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::169.254.169.254",
            "64:ff9b::100.64.0.1",
            // In 64:ff9b::/32 but outside the /96: unassigned, refused.
            "64:ff9b:0:0:1::808:808",
        ]);
        assert_allowed(&["64:ff9b::808:808", "64:ff9b::1.1.1.1"]);
    }

    #[test]
    fn v6_nat64_local_use_refused_whole() {
        assert_refused(&[
            "64:ff9b:1::",
            "64:ff9b:1::808:808",
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
        ]);
    }

    #[test]
    fn v6_public_allowed() {
        assert_allowed(&[
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "2001:1::1",
            "2003::1",
        ]);
    }

    #[test]
    fn localhost_names() {
        assert!(is_local_host_name("localhost"));
        assert!(is_local_host_name("LocalHost."));
        assert!(is_local_host_name("a.localhost"));
        assert!(!is_local_host_name("localhost.example.com"));
    }
}
