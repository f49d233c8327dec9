//! A small reader for raw BTF (BPF Type Format) blobs that finds one enum and returns its
//! values and names.
//!
//! The kernel names drop reasons only through BTF (`enum skb_drop_reason`), and the set
//! changes with every release, so the agent reads it from `/sys/kernel/btf/vmlinux` instead of
//! carrying a table. Finding one enum needs only the header, the type section and the string
//! section; a full BTF library is more than that needs (`btf-rs`, the maintained reader, is
//! LGPL-2.1-or-later), so this is our own, and it is fuzzed in the tests below.
//!
//! The blob comes from the kernel but is treated as untrusted: every offset and length is
//! checked before use, and anything malformed is a [`BtfError`] naming what was wrong, never a
//! panic or an out-of-bounds read.

use std::collections::BTreeMap;

/// Where the running kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The enum the kernel's `skb:kfree_skb` tracepoint takes its `reason` from.
pub const DROP_REASON_ENUM: &str = "skb_drop_reason";

const BTF_MAGIC: u16 = 0xEB9F;
const BTF_VERSION: u8 = 1;
/// `struct btf_header` as of BTF version 1; `hdr_len` may be larger (a newer header), and
/// then the extra bytes are skipped, as libbpf does.
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("could not read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("BTF blob is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    ShortHeader { len: usize },
    #[error("bad BTF magic {0:#06x} (expected 0xeb9f)")]
    BadMagic(u16),
    #[error("unsupported BTF version {0} (expected {BTF_VERSION})")]
    Version(u8),
    #[error("BTF header length {hdr_len} is invalid for a {len}-byte blob")]
    HeaderLength { hdr_len: u32, len: usize },
    #[error(
        "BTF {section} section (offset {off}, length {section_len} after the header) lies outside \
         the {len}-byte blob"
    )]
    Section {
        section: &'static str,
        off: u32,
        section_len: u32,
        len: usize,
    },
    #[error("BTF type {id} at type-section offset {offset} is truncated: needs {need} bytes")]
    TypeTruncated { id: u32, offset: usize, need: usize },
    #[error("BTF type {id} at type-section offset {offset} has unknown kind {kind}")]
    UnknownKind { id: u32, offset: usize, kind: u8 },
    #[error("BTF name offset {name_off} is outside the {str_len}-byte string section")]
    NameOutOfRange { name_off: u32, str_len: usize },
    #[error("BTF name at string offset {name_off} is not NUL-terminated")]
    NameUnterminated { name_off: u32 },
    #[error("BTF name at string offset {name_off} is not UTF-8")]
    NameNotUtf8 { name_off: u32 },
    #[error("no enum named {0:?} in the BTF")]
    NotFound(String),
    #[error("no member {member:?} in struct {structure:?} in the BTF")]
    MemberNotFound { structure: String, member: String },
    #[error("member {member:?} of struct {structure:?} is a bitfield, not addressable")]
    Bitfield { structure: String, member: String },
    #[error("value {value} of {name} does not fit in 32 bits")]
    ValueRange { name: String, value: u64 },
}

/// The values and names of the enum `name` (kind ENUM or ENUM64), in declaration order.
///
/// Values are returned as u64: ENUM64 values whole; 32-bit ENUM values zero-extended when the
/// enum is unsigned and sign-extended (two's complement) when BTF marks it signed, so a signed
/// `-1` comes back as `u64::MAX`. If several enums share the name, the first one is used.
pub fn enum_values(btf: &[u8], name: &str) -> Result<Vec<(u64, String)>, BtfError> {
    let blob = Blob::parse(btf)?;
    for ty in blob.types() {
        let ty = ty?;
        if (ty.kind == KIND_ENUM || ty.kind == KIND_ENUM64)
            && blob.name(ty.name_off)? == name.as_bytes()
        {
            return enum_entries(&blob, ty.kind, ty.kind_flag, ty.body);
        }
    }
    Err(BtfError::NotFound(name.to_string()))
}

/// How deep anonymous structs and unions are followed looking for a member; the kernel nests
/// a few levels (`struct_group`), and a bound keeps a malformed, cyclic blob from recursing.
const MAX_NESTING: u32 = 8;

/// The byte offset of `member` in the first struct named `structure`, looking through
/// anonymous struct and union members as C does (`sk_buff.dev` sits in an anonymous union).
pub fn member_offset(btf: &[u8], structure: &str, member: &str) -> Result<u32, BtfError> {
    path_offset(btf, structure, &[member])
}

/// The byte offset of a nested member, `path` naming one member per level:
/// `net_device` + `["nd_net", "net"]` is `offsetof(struct net_device, nd_net.net)`.
pub fn path_offset(btf: &[u8], structure: &str, path: &[&str]) -> Result<u32, BtfError> {
    Structs::parse(btf)?.path_offset(structure, path)
}

/// A blob with its type section indexed by ID once, for several member lookups.
struct Structs<'a> {
    blob: Blob<'a>,
    types: Vec<Type<'a>>,
}

impl<'a> Structs<'a> {
    fn parse(btf: &'a [u8]) -> Result<Self, BtfError> {
        let blob = Blob::parse(btf)?;
        let types = blob.types().collect::<Result<Vec<_>, _>>()?;
        Ok(Self { blob, types })
    }

    /// As [`path_offset`], on the already indexed blob.
    fn path_offset(&self, structure: &str, path: &[&str]) -> Result<u32, BtfError> {
        let (blob, types) = (&self.blob, self.types.as_slice());
        let not_found = || BtfError::MemberNotFound {
            structure: structure.to_string(),
            member: path.join("."),
        };
        let mut current = None;
        for ty in types {
            if ty.kind == KIND_STRUCT && blob.name(ty.name_off)? == structure.as_bytes() {
                current = Some(ty);
                break;
            }
        }
        let mut bits = 0u32;
        for (i, member) in path.iter().enumerate() {
            let ty = current.ok_or_else(not_found)?;
            let (b, type_id) =
                find_member(blob, types, ty, member.as_bytes(), 0)?.ok_or_else(not_found)?;
            bits = bits.saturating_add(b);
            if i + 1 < path.len() {
                current = resolve(types, type_id)
                    .filter(|t| t.kind == KIND_STRUCT || t.kind == KIND_UNION);
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield {
                structure: structure.to_string(),
                member: path.join("."),
            });
        }
        Ok(bits / 8)
    }
}

/// The bit offset and type id of `member` in struct or union `ty`, or in one of its
/// anonymous members.
fn find_member(
    blob: &Blob<'_>,
    types: &[Type<'_>],
    ty: &Type<'_>,
    member: &[u8],
    depth: u32,
) -> Result<Option<(u32, u32)>, BtfError> {
    for rec in ty.body.chunks_exact(12) {
        let name_off = blob.u32_at(rec, 0);
        let type_id = blob.u32_at(rec, 4);
        let raw = blob.u32_at(rec, 8);
        // With kind_flag set, the top 8 bits hold a bitfield size.
        let bits = if ty.kind_flag { raw & 0x00ff_ffff } else { raw };
        if name_off != 0 {
            if blob.name(name_off)? == member {
                return Ok(Some((bits, type_id)));
            }
            continue;
        }
        if depth >= MAX_NESTING {
            continue;
        }
        if let Some(inner) = resolve(types, type_id)
            && (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
            && let Some((b, t)) = find_member(blob, types, inner, member, depth + 1)?
        {
            return Ok(Some((bits.saturating_add(b), t)));
        }
    }
    Ok(None)
}

/// The type `id` refers to once typedefs and qualifiers are looked through (bounded, in case a
/// malformed blob loops).
fn resolve<'t, 'a>(types: &'t [Type<'a>], mut id: u32) -> Option<&'t Type<'a>> {
    for _ in 0..MAX_NESTING {
        let ty = types.get(usize::try_from(id).ok()?.checked_sub(1)?)?;
        match ty.kind {
            KIND_TYPEDEF | KIND_CONST | KIND_VOLATILE | KIND_RESTRICT | KIND_TYPE_TAG => {
                id = ty.size_or_type;
            }
            _ => return Some(ty),
        }
    }
    None
}

/// The fields of the running kernel's `sk_buff`, `net_device` and `net` that the drop
/// tracepoint reads, from its BTF.
pub fn kernel_offsets() -> Result<agent_common::KernelOffsets, BtfError> {
    let btf = read_vmlinux()?;
    // The type section is indexed once for all six lookups.
    let s = Structs::parse(&btf)?;
    Ok(agent_common::KernelOffsets {
        valid: 1,
        skb_dev: s.path_offset("sk_buff", &["dev"])?,
        skb_head: s.path_offset("sk_buff", &["head"])?,
        skb_network_header: s.path_offset("sk_buff", &["network_header"])?,
        dev_ifindex: s.path_offset("net_device", &["ifindex"])?,
        dev_net: s.path_offset("net_device", &["nd_net", "net"])?,
        net_inum: s.path_offset("net", &["ns", "inum"])?,
    })
}

fn read_vmlinux() -> Result<Vec<u8>, BtfError> {
    std::fs::read(VMLINUX_BTF).map_err(|e| BtfError::Read {
        path: VMLINUX_BTF.to_string(),
        source: e,
    })
}

/// The running kernel's drop reasons by value, named as the kernel's own tracepoint prints them:
/// `SKB_DROP_REASON_NO_SOCKET` is `NO_SOCKET`, and the two reasons without that prefix lose
/// `SKB_` (`SKB_CONSUMED` is `CONSUMED`). The `MAX` and `SUBSYS_MASK` markers are not reasons
/// and are left out.
pub fn drop_reasons() -> Result<BTreeMap<u32, String>, BtfError> {
    drop_reasons_in(&read_vmlinux()?)
}

fn drop_reasons_in(btf: &[u8]) -> Result<BTreeMap<u32, String>, BtfError> {
    let mut out = BTreeMap::new();
    for (value, name) in enum_values(btf, DROP_REASON_ENUM)? {
        let short = name
            .strip_prefix("SKB_DROP_REASON_")
            .or_else(|| name.strip_prefix("SKB_"))
            .unwrap_or(&name);
        if short == "MAX" || short == "SUBSYS_MASK" {
            continue;
        }
        let value = u32::try_from(value).map_err(|_| BtfError::ValueRange {
            name: name.clone(),
            value,
        })?;
        // Keep the first name for a value, as the kernel's own symbol table would.
        out.entry(value).or_insert_with(|| short.to_string());
    }
    Ok(out)
}

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Bytes that follow a type's 12-byte header, by kind; `None` for kinds we do not know, whose
/// size we cannot tell, so the walk cannot go on past them.
fn trailing_len(kind: u8, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT => 4,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ENUM64 => 12 * vlen,
        _ => return None,
    })
}

/// Decodes the `btf_enum` / `btf_enum64` records that follow an enum's type header.
fn enum_entries(
    blob: &Blob<'_>,
    kind: u8,
    signed: bool,
    body: &[u8],
) -> Result<Vec<(u64, String)>, BtfError> {
    let record = if kind == KIND_ENUM64 { 12 } else { 8 };
    body.chunks_exact(record)
        .map(|r| {
            let name_off = blob.u32_at(r, 0);
            let lo = blob.u32_at(r, 4);
            let value = if kind == KIND_ENUM64 {
                (u64::from(blob.u32_at(r, 8)) << 32) | u64::from(lo)
            } else if signed {
                // Reinterpret the 32 bits as i32, then widen with its sign.
                i64::from(lo as i32) as u64
            } else {
                u64::from(lo)
            };
            let name = std::str::from_utf8(blob.name(name_off)?)
                .map_err(|_| BtfError::NameNotUtf8 { name_off })?;
            Ok((value, name.to_string()))
        })
        .collect()
}

/// One type record: its header fields and the bytes that follow the header.
struct Type<'a> {
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    size_or_type: u32,
    body: &'a [u8],
}

/// Walks the type section in ID order (ID 1 first; 0 is `void`, which has no entry), stopping
/// at the first malformed record.
struct Types<'b, 'a> {
    blob: &'b Blob<'a>,
    id: u32,
    offset: usize,
    failed: bool,
}

impl<'a> Iterator for Types<'_, 'a> {
    type Item = Result<Type<'a>, BtfError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.blob.types.len() {
            return None;
        }
        self.id = self.id.saturating_add(1);
        let (id, offset) = (self.id, self.offset);
        let result = (|| {
            let types = self.blob.types;
            let header = types.get(offset..).and_then(|t| t.get(..TYPE_LEN)).ok_or(
                BtfError::TypeTruncated {
                    id,
                    offset,
                    need: TYPE_LEN,
                },
            )?;
            let info = self.blob.u32_at(header, 4);
            let kind = ((info >> 24) & 0x1f) as u8;
            let trailing = trailing_len(kind, (info & 0xffff) as usize)
                .ok_or(BtfError::UnknownKind { id, offset, kind })?;
            let need = TYPE_LEN + trailing;
            let body = types
                .get(offset..)
                .and_then(|t| t.get(TYPE_LEN..need))
                .ok_or(BtfError::TypeTruncated { id, offset, need })?;
            Ok((
                Type {
                    name_off: self.blob.u32_at(header, 0),
                    kind,
                    kind_flag: info >> 31 == 1,
                    size_or_type: self.blob.u32_at(header, 8),
                    body,
                },
                need,
            ))
        })();
        Some(match result {
            Ok((ty, need)) => {
                self.offset += need;
                Ok(ty)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        })
    }
}

/// A BTF blob whose header has been checked and whose two sections are in bounds.
struct Blob<'a> {
    big_endian: bool,
    types: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Blob<'a> {
    fn parse(btf: &'a [u8]) -> Result<Self, BtfError> {
        let header = btf
            .get(..HEADER_LEN)
            .ok_or(BtfError::ShortHeader { len: btf.len() })?;
        // BTF is in the byte order of the machine that produced it; the magic tells which.
        let big_endian = match [header[0], header[1]] {
            m if u16::from_le_bytes(m) == BTF_MAGIC => false,
            m if u16::from_be_bytes(m) == BTF_MAGIC => true,
            m => return Err(BtfError::BadMagic(u16::from_le_bytes(m))),
        };
        let mut blob = Blob {
            big_endian,
            types: &[],
            strings: &[],
        };
        if header[2] != BTF_VERSION {
            return Err(BtfError::Version(header[2]));
        }
        let hdr_len = blob.u32_at(header, 4);
        let hdr_end = usize::try_from(hdr_len)
            .ok()
            .filter(|&h| h >= HEADER_LEN && h <= btf.len())
            .ok_or(BtfError::HeaderLength {
                hdr_len,
                len: btf.len(),
            })?;
        let section = |section: &'static str, off: u32, section_len: u32| {
            let start = hdr_end.checked_add(off as usize);
            let end = start.and_then(|s| s.checked_add(section_len as usize));
            match (start, end) {
                (Some(s), Some(e)) => btf.get(s..e),
                _ => None,
            }
            .ok_or(BtfError::Section {
                section,
                off,
                section_len,
                len: btf.len(),
            })
        };
        blob.types = section("type", blob.u32_at(header, 8), blob.u32_at(header, 12))?;
        blob.strings = section("string", blob.u32_at(header, 16), blob.u32_at(header, 20))?;
        Ok(blob)
    }

    fn types<'b>(&'b self) -> Types<'b, 'a> {
        Types {
            blob: self,
            id: 0,
            offset: 0,
            failed: false,
        }
    }

    /// The u32 at `at` in `bytes`. Callers pass slices whose length they have checked; a short
    /// slice reads as 0 rather than panicking, so a bug here cannot become a crash.
    fn u32_at(&self, bytes: &[u8], at: usize) -> u32 {
        let Some(b) = bytes
            .get(at..)
            .and_then(|b| b.get(..4))
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        else {
            return 0;
        };
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// The NUL-terminated name at `name_off` in the string section, without the NUL.
    fn name(&self, name_off: u32) -> Result<&'a [u8], BtfError> {
        let rest = self
            .strings
            .get(name_off as usize..)
            .filter(|r| !r.is_empty())
            .ok_or(BtfError::NameOutOfRange {
                name_off,
                str_len: self.strings.len(),
            })?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(BtfError::NameUnterminated { name_off })?;
        Ok(&rest[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs by hand, in either byte order.
    struct Builder {
        big_endian: bool,
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new(big_endian: bool) -> Self {
            Self {
                big_endian,
                types: Vec::new(),
                // Offset 0 is the empty name, as in every real blob.
                strings: vec![0],
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn word(&self, out: &mut Vec<u8>, v: u32) {
            if self.big_endian {
                out.extend_from_slice(&v.to_be_bytes());
            } else {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }

        fn push(&mut self, v: u32) {
            let mut t = std::mem::take(&mut self.types);
            self.word(&mut t, v);
            self.types = t;
        }

        /// One type: header, then `trailing` 32-bit words.
        fn ty(
            &mut self,
            name: &str,
            kind: u8,
            kflag: bool,
            vlen: u16,
            size: u32,
            trailing: &[u32],
        ) {
            let name_off = if name.is_empty() { 0 } else { self.str(name) };
            self.push(name_off);
            self.push((u32::from(kflag) << 31) | (u32::from(kind) << 24) | u32::from(vlen));
            self.push(size);
            for &w in trailing {
                self.push(w);
            }
        }

        fn enum32(&mut self, name: &str, signed: bool, values: &[(&str, i32)]) {
            let mut words = Vec::new();
            for (n, v) in values {
                words.push(self.str(n));
                words.push(*v as u32);
            }
            self.ty(name, KIND_ENUM, signed, values.len() as u16, 4, &words);
        }

        fn enum64(&mut self, name: &str, values: &[(&str, u64)]) {
            let mut words = Vec::new();
            for (n, v) in values {
                words.push(self.str(n));
                words.push(*v as u32);
                words.push((*v >> 32) as u32);
            }
            self.ty(name, KIND_ENUM64, false, values.len() as u16, 8, &words);
        }

        fn build_with_header_len(&self, hdr_len: u32) -> Vec<u8> {
            let mut out = Vec::new();
            let magic = if self.big_endian {
                BTF_MAGIC.to_be_bytes()
            } else {
                BTF_MAGIC.to_le_bytes()
            };
            out.extend_from_slice(&magic);
            out.push(BTF_VERSION);
            out.push(0);
            for w in [
                hdr_len,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                self.word(&mut out, w);
            }
            out.resize(hdr_len as usize, 0);
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }

        fn build(&self) -> Vec<u8> {
            self.build_with_header_len(HEADER_LEN as u32)
        }
    }

    /// One type of every kind, each with trailing data where its kind has any, so that a wrong
    /// size for any kind derails the walk before the enums at the end.
    fn sample(big_endian: bool) -> Builder {
        let mut b = Builder::new(big_endian);
        b.ty("int", KIND_INT, false, 0, 4, &[0x0100_0020]); // 1
        b.ty("", KIND_PTR, false, 0, 1, &[]); // 2
        b.ty("", KIND_ARRAY, false, 0, 0, &[1, 1, 16]); // 3
        let (a, c) = (b.str("a"), b.str("c"));
        b.ty("pair", KIND_STRUCT, false, 2, 8, &[a, 1, 0, c, 1, 32]); // 4
        b.ty("u", KIND_UNION, false, 1, 4, &[a, 1, 0]); // 5
        b.ty("fwd", KIND_FWD, false, 0, 0, &[]); // 6
        b.ty("int_t", KIND_TYPEDEF, false, 0, 1, &[]); // 7
        b.ty("", KIND_VOLATILE, false, 0, 1, &[]); // 8
        b.ty("", KIND_CONST, false, 0, 1, &[]); // 9
        b.ty("", KIND_RESTRICT, false, 0, 2, &[]); // 10
        let x = b.str("x");
        b.ty("", KIND_FUNC_PROTO, false, 2, 1, &[x, 1, 0, 1]); // 11
        b.ty("f", KIND_FUNC, false, 0, 11, &[]); // 12
        b.ty("v", KIND_VAR, false, 0, 1, &[1]); // 13
        b.ty(".data", KIND_DATASEC, false, 1, 4, &[13, 0, 4]); // 14
        b.ty("double", KIND_FLOAT, false, 0, 8, &[]); // 15
        b.ty("tag", KIND_DECL_TAG, false, 0, 12, &[0xffff_ffff]); // 16
        b.ty("user", KIND_TYPE_TAG, false, 0, 2, &[]); // 17
        // A struct with the wanted name: only enums may match.
        b.ty("skb_drop_reason", KIND_STRUCT, false, 0, 0, &[]); // 18
        b.enum64("big", &[("BIG_ONE", 1), ("BIG_TOP", 0xffff_ffff_0000_0001)]); // 19
        b.enum32("sgn", true, &[("MINUS_ONE", -1), ("TWO", 2)]); // 20
        b.enum32("", false, &[("ANON", 9)]); // 21
        b.enum32(
            "skb_drop_reason",
            false,
            &[
                ("SKB_NOT_DROPPED_YET", 0),
                ("SKB_CONSUMED", 1),
                ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
                ("SKB_DROP_REASON_NO_SOCKET", 3),
                ("SKB_DROP_REASON_NETFILTER_DROP", 4),
                ("SKB_DROP_REASON_MAX", 5),
                ("SKB_DROP_REASON_SUBSYS_MASK", 0xffff_0000_u32 as i32),
            ],
        ); // 22
        b
    }

    fn owned(v: &[(u64, &str)]) -> Vec<(u64, String)> {
        v.iter().map(|(n, s)| (*n, (*s).to_string())).collect()
    }

    /// Asserts that `$result` is an `Err` matching `$pattern`, showing what it was otherwise.
    macro_rules! assert_err {
        ($result:expr, $pattern:pat $(if $guard:expr)?) => {{
            let result = $result;
            assert!(
                matches!(&result, Err($pattern) $(if $guard)?),
                "got {result:?}"
            );
        }};
    }

    fn values(btf: &[u8], name: &str) -> Vec<(u64, String)> {
        enum_values(btf, name).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn finds_the_enum_after_every_kind() {
        for big_endian in [false, true] {
            let blob = sample(big_endian).build();
            assert_eq!(
                values(&blob, "skb_drop_reason"),
                owned(&[
                    (0, "SKB_NOT_DROPPED_YET"),
                    (1, "SKB_CONSUMED"),
                    (2, "SKB_DROP_REASON_NOT_SPECIFIED"),
                    (3, "SKB_DROP_REASON_NO_SOCKET"),
                    (4, "SKB_DROP_REASON_NETFILTER_DROP"),
                    (5, "SKB_DROP_REASON_MAX"),
                    (0xffff_0000, "SKB_DROP_REASON_SUBSYS_MASK"),
                ]),
                "big_endian={big_endian}"
            );
            assert_eq!(
                values(&blob, "big"),
                owned(&[(1, "BIG_ONE"), (0xffff_ffff_0000_0001, "BIG_TOP")])
            );
            assert_eq!(
                values(&blob, "sgn"),
                owned(&[(u64::MAX, "MINUS_ONE"), (2, "TWO")])
            );
            assert_eq!(values(&blob, ""), owned(&[(9, "ANON")]));
            assert_err!(enum_values(&blob, "nope"), BtfError::NotFound(n) if n == "nope");
            // A struct of that name does not count.
            assert_err!(enum_values(&blob, "pair"), BtfError::NotFound(_));
        }
    }

    #[test]
    fn drop_reason_names_lose_their_prefix_and_markers() {
        let blob = sample(false).build();
        let reasons = drop_reasons_in(&blob).expect("reasons");
        let expected: BTreeMap<u32, String> = [
            (0, "NOT_DROPPED_YET"),
            (1, "CONSUMED"),
            (2, "NOT_SPECIFIED"),
            (3, "NO_SOCKET"),
            (4, "NETFILTER_DROP"),
        ]
        .into_iter()
        .map(|(v, n)| (v, n.to_string()))
        .collect();
        assert_eq!(reasons, expected);
    }

    #[test]
    fn a_longer_header_is_skipped() {
        let blob = sample(false).build_with_header_len(32);
        assert_eq!(
            values(&blob, "sgn"),
            owned(&[(u64::MAX, "MINUS_ONE"), (2, "TWO")])
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let blob = sample(false).build();
        for len in 0..blob.len() {
            assert!(
                enum_values(&blob[..len], "skb_drop_reason").is_err(),
                "truncated to {len} bytes"
            );
        }
    }

    #[test]
    fn malformed_blobs_name_what_is_wrong() {
        let good = sample(false).build();
        let patch = |at: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            b
        };
        assert_err!(
            enum_values(&good[..10], "x"),
            BtfError::ShortHeader { len: 10 }
        );
        assert_err!(
            enum_values(&patch(0, &[0x9f, 0xec]), "x"),
            BtfError::BadMagic(0xec9f)
        );
        assert_err!(enum_values(&patch(2, &[2]), "x"), BtfError::Version(2));
        assert_err!(
            enum_values(&patch(4, &8u32.to_le_bytes()), "x"),
            BtfError::HeaderLength { hdr_len: 8, .. }
        );
        // type_len reaching past the end of the blob.
        assert_err!(
            enum_values(&patch(12, &u32::MAX.to_le_bytes()), "x"),
            BtfError::Section {
                section: "type",
                ..
            }
        );
        // str_off + str_len overflowing.
        assert_err!(
            enum_values(&patch(16, &u32::MAX.to_le_bytes()), "x"),
            BtfError::Section {
                section: "string",
                ..
            }
        );
        // The first type's kind set to 0 (UNKN), then to 31.
        assert_err!(
            enum_values(&patch(HEADER_LEN + 7, &[0]), "x"),
            BtfError::UnknownKind {
                id: 1,
                offset: 0,
                kind: 0
            }
        );
        assert_err!(
            enum_values(&patch(HEADER_LEN + 7, &[0x1f]), "x"),
            BtfError::UnknownKind { kind: 31, .. }
        );
        // The first type turned into a STRUCT with 0xffff members: far past the section.
        assert_err!(
            enum_values(&patch(HEADER_LEN + 4, &[0xff, 0xff, 0, KIND_STRUCT]), "x"),
            BtfError::TypeTruncated { id: 1, .. }
        );
        // A drop reason that does not fit the tracepoint's u32.
        let mut b = Builder::new(false);
        b.enum64(DROP_REASON_ENUM, &[("SKB_DROP_REASON_HUGE", 1 << 40)]);
        assert_err!(drop_reasons_in(&b.build()), BtfError::ValueRange { .. });
    }

    #[test]
    fn bad_names_are_errors() {
        let mut b = Builder::new(false);
        let name = b.str("e");
        b.ty("", KIND_ENUM, false, 1, 4, &[0xffff, 1]);
        // The enum's own name, patched afterwards to point at `e`.
        let mut blob = b.build();
        blob[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&name.to_le_bytes());
        let len = b.strings.len();
        assert_err!(
            enum_values(&blob, "e"),
            BtfError::NameOutOfRange {
                name_off: 0xffff,
                str_len
            } if *str_len == len
        );

        let mut b = Builder::new(false);
        let bad = b.str("\u{7f}\u{7f}");
        b.ty("e", KIND_ENUM, false, 1, 4, &[bad, 1]);
        let mut blob = b.build();
        let at = blob.len() - b.strings.len() + bad as usize;
        blob[at] = 0xff;
        assert_err!(
            enum_values(&blob, "e"),
            BtfError::NameNotUtf8 { name_off } if *name_off == bad
        );

        let mut b = Builder::new(false);
        b.ty("e", KIND_ENUM, false, 0, 4, &[]);
        let mut blob = b.build();
        let last = blob.len() - 1;
        blob[last] = b'!';
        assert_err!(
            enum_values(&blob, "e"),
            BtfError::NameUnterminated { name_off: 1 }
        );
    }

    /// xorshift64: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn step(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.step() % n as u64) as usize
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        let good = sample(false).build();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut errors = 0;
        for _ in 0..50_000 {
            let mut blob = good.clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(blob.len());
                match rng.below(3) {
                    0 => blob[at] = rng.step() as u8,
                    1 => blob[at] ^= 1 << rng.below(8),
                    // Whole words too, so lengths and offsets take extreme values.
                    _ => {
                        let at = at & !3;
                        let v = [0, 1, u32::MAX, 0x8000_0000, rng.step() as u32][rng.below(5)];
                        if let Some(w) = blob.get_mut(at..at + 4) {
                            w.copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
            if rng.below(8) == 0 {
                blob.truncate(rng.below(blob.len() + 1));
            }
            for name in ["skb_drop_reason", "sgn", "big", ""] {
                if enum_values(&blob, name).is_err() {
                    errors += 1;
                }
            }
            let _ = drop_reasons_in(&blob);
            let _ = member_offset(&blob, "pair", "c");
        }
        // The mutations do reach the checks, not only harmless bytes.
        assert!(errors > 10_000, "only {errors} errors");
    }

    /// `struct sk_buff { int first:8; union { struct { int x; int *dev; }; int y; }; int *head;
    /// int bits:3; }`, the union reached through a typedef, and a struct that names itself
    /// as its anonymous member (malformed: must not recurse forever).
    fn nested() -> Vec<u8> {
        let mut b = Builder::new(false);
        b.ty("int", KIND_INT, false, 0, 4, &[0x0100_0020]); // 1
        b.ty("", KIND_PTR, false, 0, 1, &[]); // 2
        let (x, dev) = (b.str("x"), b.str("dev"));
        b.ty("", KIND_STRUCT, false, 2, 16, &[x, 1, 0, dev, 2, 64]); // 3
        let y = b.str("y");
        b.ty("", KIND_UNION, false, 2, 16, &[0, 3, 0, y, 1, 0]); // 4
        b.ty("u_t", KIND_TYPEDEF, false, 0, 4, &[]); // 5
        let (first, head, bits) = (b.str("first"), b.str("head"), b.str("bits"));
        let words = [
            first,
            1,
            (8 << 24),
            0,
            5,
            64,
            head,
            2,
            256,
            bits,
            1,
            (3 << 24) | 325,
        ];
        b.ty("sk_buff", KIND_STRUCT, true, 4, 48, &words); // 6
        b.ty("loop", KIND_STRUCT, false, 1, 8, &[0, 7, 0]); // 7
        let (pad, inner) = (b.str("pad"), b.str("inner"));
        b.ty(
            "holder",
            KIND_STRUCT,
            false,
            2,
            20,
            &[pad, 1, 0, inner, 3, 32],
        ); // 8
        b.build()
    }

    #[test]
    fn member_offsets_look_through_anonymous_members() {
        let blob = nested();
        assert_eq!(member_offset(&blob, "sk_buff", "first").expect("first"), 0);
        assert_eq!(member_offset(&blob, "sk_buff", "dev").expect("dev"), 16);
        assert_eq!(member_offset(&blob, "sk_buff", "y").expect("y"), 8);
        assert_eq!(member_offset(&blob, "sk_buff", "head").expect("head"), 32);
        assert_err!(
            member_offset(&blob, "sk_buff", "bits"),
            BtfError::Bitfield { member, .. } if member == "bits"
        );
        assert_err!(
            member_offset(&blob, "sk_buff", "nope"),
            BtfError::MemberNotFound { structure, member } if structure == "sk_buff" && member == "nope"
        );
        assert_err!(
            member_offset(&blob, "net_device", "ifindex"),
            BtfError::MemberNotFound { .. }
        );
        assert_err!(
            member_offset(&blob, "loop", "x"),
            BtfError::MemberNotFound { .. }
        );
        // Through a member into its struct: `holder.inner.dev` is 4 + 8.
        assert_eq!(
            path_offset(&blob, "holder", &["inner", "dev"]).expect("path"),
            12
        );
        // A pointer member cannot be followed into.
        assert_err!(
            path_offset(&blob, "sk_buff", &["head", "x"]),
            BtfError::MemberNotFound { member, .. } if member == "head.x"
        );
        for len in 0..blob.len() {
            let _ = member_offset(&blob[..len], "sk_buff", "dev");
        }
    }

    fn has_vmlinux() -> bool {
        let present = std::path::Path::new(VMLINUX_BTF).exists();
        if !present {
            eprintln!("skipped: {VMLINUX_BTF} absent (kernel without CONFIG_DEBUG_INFO_BTF)");
        }
        present
    }

    /// bpftool's raw dump of the kernel's BTF, the independent reading to compare with.
    fn bpftool_dump() -> Option<String> {
        let Ok(out) = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
        else {
            eprintln!("bpftool not installed: cross-check skipped");
            return None;
        };
        assert!(out.status.success(), "bpftool failed");
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The offsets the drop tracepoint uses, read from this kernel and cross-checked with
    /// bpftool's raw dump for the top-level members.
    #[test]
    fn reads_this_kernels_offsets() {
        if !has_vmlinux() {
            return;
        }
        let offs = kernel_offsets().expect("offsets");
        // `dev` follows the next/prev pointers in every kernel since 4.x.
        assert_eq!(offs.skb_dev, 16);
        let Some(text) = bpftool_dump() else {
            return;
        };
        // `[id] STRUCT 'net_device' size=… vlen=N`, then `\t'ifindex' type_id=… bits_offset=B`.
        let bits_of = |structure: &str, member: &str| -> u32 {
            text.lines()
                .skip_while(|l| !l.contains(&format!("STRUCT '{structure}' ")))
                .skip(1)
                .take_while(|l| l.starts_with('\t'))
                .find(|l| l.trim_start().starts_with(&format!("'{member}' ")))
                .and_then(|l| l.split("bits_offset=").nth(1))
                .and_then(|b| b.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("{structure}.{member} not in bpftool's dump"))
        };
        assert_eq!(offs.dev_ifindex * 8, bits_of("net_device", "ifindex"));
        // possible_net_t holds just the pointer.
        assert_eq!(offs.dev_net * 8, bits_of("net_device", "nd_net"));
        assert_eq!(
            offs.net_inum * 8,
            bits_of("net", "ns") + bits_of("ns_common", "inum")
        );
        assert_eq!(offs.skb_head * 8, bits_of("sk_buff", "head"));
    }

    /// The running kernel's own BTF, cross-checked with bpftool when it is installed.
    #[test]
    fn reads_this_kernels_drop_reasons() {
        if !has_vmlinux() {
            return;
        }
        let reasons = drop_reasons().expect("drop reasons");
        for name in ["NOT_SPECIFIED", "NO_SOCKET", "NETFILTER_DROP"] {
            assert!(
                reasons.values().any(|n| n == name),
                "{name} missing from {reasons:?}"
            );
        }
        assert!(reasons.len() >= 60, "only {} reasons", reasons.len());

        let btf = std::fs::read(VMLINUX_BTF).expect("read BTF");
        let raw = enum_values(&btf, DROP_REASON_ENUM).expect("enum");
        // The kernel declares the reasons without explicit values: each is its position.
        for (pos, (value, name)) in raw.iter().take(10).enumerate() {
            assert_eq!(*value, pos as u64, "{name}");
        }

        let Some(text) = bpftool_dump() else {
            return;
        };
        // `[id] ENUM 'skb_drop_reason' … vlen=N`, then one `\t'NAME' val=V` line per value.
        let from_bpftool: Vec<(u64, String)> = text
            .lines()
            .skip_while(|l| !l.contains("ENUM 'skb_drop_reason'"))
            .skip(1)
            .take_while(|l| l.starts_with('\t'))
            .filter_map(|l| {
                let (name, val) = l.trim().split_once(" val=")?;
                Some((val.parse().ok()?, name.trim_matches('\'').to_string()))
            })
            .collect();
        assert_eq!(raw, from_bpftool);
    }
}
