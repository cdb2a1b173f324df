//! DNS messages (RFC 1035 section 4, EDNS(0) from RFC 6891), without I/O:
//! a query is decoded from one UDP payload (or one TCP message), a response
//! is encoded. Only what a stub resolver sends is understood: one question,
//! optional OPT record; anything else is answered with FORMERR or NOTIMP.

/// Resource record types used here.
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Pointer (reverse lookups).
    pub const PTR: u16 = 12;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// EDNS(0) pseudo-record.
    pub const OPT: u16 = 41;
    /// Any type.
    pub const ANY: u16 = 255;
}

/// Response codes.
pub mod rcode {
    /// No error.
    pub const NOERROR: u8 = 0;
    /// The query could not be interpreted.
    pub const FORMERR: u8 = 1;
    /// Server failure.
    pub const SERVFAIL: u8 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u8 = 3;
    /// Not implemented (opcode).
    pub const NOTIMP: u8 = 4;
    /// Refused by policy.
    pub const REFUSED: u8 = 5;
    /// Unsupported EDNS version (extended code; 4 high bits in the OPT record).
    pub const BADVERS: u16 = 16;
}

/// Class IN.
pub const CLASS_IN: u16 = 1;
/// Class ANY.
pub const CLASS_ANY: u16 = 255;
/// UDP payload size advertised in responses (the DNS flag day 2020 value).
pub const EDNS_UDP_SIZE: u16 = 1232;
/// Longest name in wire form (RFC 1035 section 2.3.4).
const MAX_NAME: usize = 255;

/// Why a message could not be read as a query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Shorter than a header, or a response: dropped without answer (no
    /// reflection, no loops).
    #[error("not a DNS query")]
    Drop,
    /// A query that cannot be served; answer with this code.
    #[error("query refused with code {rcode}")]
    Reply {
        /// Header of the refused query.
        header: Header,
        /// Code to answer with (FORMERR or NOTIMP).
        rcode: u8,
    },
}

/// The fields of a query header a response echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message id.
    pub id: u16,
    /// Opcode (0 = QUERY).
    pub opcode: u8,
    /// Recursion desired.
    pub rd: bool,
    /// Checking disabled.
    pub cd: bool,
}

/// EDNS(0) information of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// Requester's UDP payload size.
    pub udp_size: u16,
    /// EDNS version.
    pub version: u8,
}

/// A decoded query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Header fields.
    pub header: Header,
    /// The question name: labels as received (case kept), dot-separated,
    /// without the root's trailing dot; `""` is the root.
    pub name: String,
    /// Whether a label holds a byte that is not `[A-Za-z0-9_-]` (such a name
    /// is never a mesh name).
    pub unusual: bool,
    /// Question type.
    pub qtype: u16,
    /// Question class.
    pub qclass: u16,
    /// The question in wire form, echoed in the response.
    pub question: Vec<u8>,
    /// EDNS(0), when the query had an OPT record.
    pub edns: Option<Edns>,
}

fn u16_at(buf: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]))
}

/// Skips a possibly compressed name in a resource record; returns the
/// offset after it.
fn skip_name(buf: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *buf.get(i)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(i + 1),
            0x00 => i += 1 + usize::from(len),
            0xC0 => {
                buf.get(i + 1)?;
                return Some(i + 2);
            }
            _ => return None,
        }
    }
}

/// Decodes a query.
pub fn parse_query(buf: &[u8]) -> Result<Query, DnsError> {
    let (Some(id), Some(flags)) = (u16_at(buf, 0), u16_at(buf, 2)) else {
        return Err(DnsError::Drop);
    };
    if buf.len() < 12 || flags & 0x8000 != 0 {
        return Err(DnsError::Drop);
    }
    let header = Header {
        id,
        opcode: ((flags >> 11) & 0xF) as u8,
        rd: flags & 0x0100 != 0,
        cd: flags & 0x0010 != 0,
    };
    let formerr = DnsError::Reply {
        header,
        rcode: rcode::FORMERR,
    };
    if header.opcode != 0 {
        return Err(DnsError::Reply {
            header,
            rcode: rcode::NOTIMP,
        });
    }
    let count = |i| u16_at(buf, i).unwrap_or(0);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 {
        return Err(formerr);
    }
    // The question: uncompressed labels.
    let mut i = 12;
    let mut name = String::new();
    let mut unusual = false;
    loop {
        let Some(&len) = buf.get(i) else {
            return Err(formerr);
        };
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xC0 != 0 || i + 1 + usize::from(len) - 12 > MAX_NAME {
            return Err(formerr);
        }
        let Some(label) = buf.get(i + 1..i + 1 + usize::from(len)) else {
            return Err(formerr);
        };
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(char::from(b));
            } else {
                unusual = true;
                name.push_str(&format!("\\{b:03}"));
            }
        }
        i += 1 + usize::from(len);
    }
    if i - 12 > MAX_NAME {
        return Err(formerr);
    }
    let (Some(qtype), Some(qclass)) = (u16_at(buf, i), u16_at(buf, i + 2)) else {
        return Err(formerr);
    };
    let question = buf[12..i + 4].to_vec();
    i += 4;
    // Other sections: only looked through for the OPT record.
    let mut edns = None;
    for section in 0..3u8 {
        let n = [an, ns, ar][usize::from(section)];
        for _ in 0..n {
            let start = i;
            let Some(after) = skip_name(buf, i) else {
                return Err(formerr);
            };
            let (Some(t), Some(class), Some(ttl_hi), Some(rdlen)) = (
                u16_at(buf, after),
                u16_at(buf, after + 2),
                u16_at(buf, after + 4),
                u16_at(buf, after + 8),
            ) else {
                return Err(formerr);
            };
            let end = after + 10 + usize::from(rdlen);
            if end > buf.len() {
                return Err(formerr);
            }
            if t == rtype::OPT {
                // RFC 6891 6.1.1: in the additional section only, at most
                // once, with the root name.
                if section != 2 || edns.is_some() || buf.get(start) != Some(&0) {
                    return Err(formerr);
                }
                edns = Some(Edns {
                    udp_size: class.max(512),
                    version: (ttl_hi & 0xFF) as u8,
                });
            }
            i = end;
        }
    }
    Ok(Query {
        header,
        name,
        unusual,
        qtype,
        qclass,
        question,
        edns,
    })
}

/// One answer record; its owner is the question name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Type.
    pub rtype: u16,
    /// Time to live, seconds.
    pub ttl: u32,
    /// Data in wire form.
    pub rdata: Vec<u8>,
}

fn flags(h: &Header, aa: bool, rcode: u8) -> u16 {
    let mut f = 0x8000 | (u16::from(h.opcode & 0xF) << 11) | u16::from(rcode & 0xF);
    if aa {
        f |= 0x0400;
    }
    if h.rd {
        f |= 0x0100;
    }
    if h.cd {
        f |= 0x0010;
    }
    f
}

fn push_opt(out: &mut Vec<u8>, ext_rcode: u8) {
    out.push(0);
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
    out.extend_from_slice(&[ext_rcode, 0, 0, 0]);
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// Encodes a response to `q` with `answers` (owner: the question name,
/// compressed as a pointer to it). Extended codes (above 15) need EDNS.
pub fn encode_response(q: &Query, aa: bool, rcode: u16, answers: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + q.question.len() + answers.len() * 28 + 11);
    out.extend_from_slice(&q.header.id.to_be_bytes());
    out.extend_from_slice(&flags(&q.header, aa, (rcode & 0xF) as u8).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    let n = u16::try_from(answers.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&u16::from(q.edns.is_some()).to_be_bytes());
    out.extend_from_slice(&q.question);
    for r in answers.iter().take(usize::from(n)) {
        out.extend_from_slice(&[0xC0, 12]);
        out.extend_from_slice(&r.rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&r.ttl.to_be_bytes());
        let len = u16::try_from(r.rdata.len()).unwrap_or(0);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&r.rdata[..usize::from(len)]);
    }
    if q.edns.is_some() {
        push_opt(&mut out, (rcode >> 4) as u8);
    }
    out
}

/// Encodes a header-only response (no question): for queries whose
/// question could not be read.
pub fn encode_error(h: &Header, rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&h.id.to_be_bytes());
    out.extend_from_slice(&flags(h, false, rcode).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// A name in wire form (uncompressed); `None` if a label is empty or too
/// long, or the name too long.
pub fn encode_name(name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..64).contains(l))?;
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query as `dig` sends it: RD, one question, an OPT record with a
    /// cookie option.
    pub(crate) fn dig_query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 1];
        q.extend(encode_name(name).unwrap());
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 12]);
        q.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        q
    }

    #[test]
    fn parses_dig_query() {
        let q = parse_query(&dig_query("Blog.test.gatehouse.internal", rtype::AAAA)).unwrap();
        assert_eq!(q.header.id, 0x1234);
        assert!(q.header.rd);
        assert_eq!(q.name, "Blog.test.gatehouse.internal");
        assert!(!q.unusual);
        assert_eq!((q.qtype, q.qclass), (rtype::AAAA, CLASS_IN));
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 1232,
                version: 0
            })
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(parse_query(&[0; 11]), Err(DnsError::Drop));
        let mut resp = dig_query("a", rtype::A);
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp), Err(DnsError::Drop));
        let mut two = dig_query("a", rtype::A);
        two[5] = 2;
        assert!(matches!(
            parse_query(&two),
            Err(DnsError::Reply { rcode: 1, .. })
        ));
        let mut notify = dig_query("a", rtype::A);
        notify[2] = 4 << 3;
        assert!(matches!(
            parse_query(&notify),
            Err(DnsError::Reply { rcode: 4, .. })
        ));
        let mut truncated = dig_query("a", rtype::A);
        truncated.truncate(20);
        assert!(matches!(
            parse_query(&truncated),
            Err(DnsError::Reply { rcode: 1, .. })
        ));
        let mut ptr = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1];
        assert!(parse_query(&ptr).is_err());
        ptr[12] = 0x41;
        assert!(parse_query(&ptr).is_err());
        let mut weird = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'a', b'.', 0xff, 0];
        weird.extend_from_slice(&[0, 1, 0, 1]);
        let q = parse_query(&weird).unwrap();
        assert!(q.unusual);
        assert_eq!(q.name, "a\\046\\255");
    }

    #[test]
    fn response_layout() {
        let q = parse_query(&dig_query("blog.test", rtype::A)).unwrap();
        let r = encode_response(
            &q,
            true,
            u16::from(rcode::NOERROR),
            &[Record {
                rtype: rtype::A,
                ttl: 60,
                rdata: vec![100, 64, 0, 2],
            }],
        );
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[2] & 0x80, 0x80, "QR");
        assert_eq!(r[2] & 0x04, 0x04, "AA");
        assert_eq!(u16_at(&r, 6), Some(1));
        assert_eq!(u16_at(&r, 10), Some(1), "OPT echoed");
        assert_eq!(&r[r.len() - 11..r.len() - 8], &[0, 0, 41]);
        let bad = encode_response(&q, false, rcode::BADVERS, &[]);
        assert_eq!(bad[3] & 0xF, 0);
        assert_eq!(bad[bad.len() - 6], 1, "extended rcode high bits");
        assert_eq!(encode_name("a..b"), None);
        assert_eq!(encode_name("ab.c.").unwrap(), b"\x02ab\x01c\x00");
    }
}
