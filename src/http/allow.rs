//! `meta.allowed_endpoints`: the endpoint hosts the runtime may connect to, checked at discovery and on
//! every outbound connection of the invoker (a registration made before the list changed, or a name
//! that now resolves elsewhere, is refused too).
//!
//! Entries are host names (exact, case-insensitive), `*.domain` (any subdomain), IP addresses and CIDR
//! blocks. A host matching a name entry is allowed as is; an IP literal must lie in a listed block; any
//! other name is allowed only when the addresses it resolves to all lie in listed blocks (the caller
//! resolves it, and connects to the address it checked).

use std::net::IpAddr;

use ipnet::IpNet;

/// A parsed `meta.allowed_endpoints` (empty: everything is allowed).
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    names: Vec<String>,
    /// `*.example.com` entries, kept as `.example.com`.
    suffixes: Vec<String>,
    nets: Vec<IpNet>,
}

impl AllowList {
    /// Parses the entries; the error names the first bad one.
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        for entry in entries {
            let entry = entry.trim().to_ascii_lowercase();
            let bad = || {
                format!("{entry:?} is neither a host name, `*.domain`, an IP address nor a CIDR")
            };
            if entry.contains('/') {
                list.nets.push(entry.parse().map_err(|_| bad())?);
            } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
            } else if let Some(domain) = entry.strip_prefix("*.") {
                if !is_host_name(domain) {
                    return Err(bad());
                }
                list.suffixes.push(format!(".{domain}"));
            } else if is_host_name(&entry) {
                list.names.push(entry);
            } else {
                return Err(bad());
            }
        }
        Ok(list)
    }

    /// True when nothing is restricted.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.suffixes.is_empty() && self.nets.is_empty()
    }

    /// What `host` (a URI host: name, IPv4, or bracketed IPv6) alone decides: `Some` for a listed name,
    /// an IP literal, or a name that no block could admit; `None` when its resolved addresses decide.
    pub fn permits_host(&self, host: &str) -> Option<bool> {
        if self.is_empty() {
            return Some(true);
        }
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(self.permits_ip(ip));
        }
        let host = host.trim_end_matches('.');
        if self.names.iter().any(|n| n == host) || self.suffixes.iter().any(|s| host.ends_with(s)) {
            return Some(true);
        }
        if self.nets.is_empty() {
            return Some(false);
        }
        None
    }

    /// True when `ip` lies in a listed block (or nothing is restricted).
    pub fn permits_ip(&self, ip: IpAddr) -> bool {
        self.is_empty() || self.nets.iter().any(|net| net.contains(&ip))
    }
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn names_ips_and_blocks() {
        let l = list(&[
            "Svc.Internal",
            "*.example.com",
            "10.0.0.0/8",
            "::1",
            "192.168.1.7",
        ]);
        assert_eq!(l.permits_host("svc.internal"), Some(true));
        assert_eq!(l.permits_host("a.b.example.com"), Some(true));
        assert_eq!(l.permits_host("example.com"), None);
        assert_eq!(l.permits_host("10.2.3.4"), Some(true));
        assert_eq!(l.permits_host("11.2.3.4"), Some(false));
        assert_eq!(l.permits_host("[::1]"), Some(true));
        assert_eq!(l.permits_host("192.168.1.7"), Some(true));
        assert_eq!(l.permits_host("192.168.1.8"), Some(false));
        assert_eq!(list(&["a.b"]).permits_host("evil.com"), Some(false));
        assert_eq!(list(&[]).permits_host("anything"), Some(true));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["10.0.0.0/99", "http://x", "a b", "*.", ""] {
            let e = AllowList::parse(&[bad.to_string()]).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
