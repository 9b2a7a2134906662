//! A parser for the `pgoutput` logical decoding plugin's messages, protocol version 1, as
//! `pg_logical_slot_peek_binary_changes` returns them (one message per row).
//!
//! Only what the follower applies is decoded: Begin, Commit, Relation, Type, Insert, Update,
//! Delete, Truncate and Origin. Column values arrive as text (protocol v1 has no binary values):
//! [`Value::Text`], [`Value::Null`] or [`Value::Unchanged`] (a TOASTed value the UPDATE did not
//! touch — the apply leaves that column out). Layout: PostgreSQL's "Logical Replication Message
//! Formats" chapter; every multi-byte integer is big-endian.

use std::fmt;

/// A decoding failure: the bytes are not a pgoutput v1 message we understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message {kind:?}: {what}")]
pub struct ParseError {
    /// The message's type byte.
    pub kind: char,
    /// What was wrong.
    pub what: String,
}

/// A column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value: not sent, leave the column as it is.
    Unchanged,
    /// The value's text form.
    Text(String),
}

/// A relation's column as the Relation message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (key).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID on the source.
    pub type_oid: u32,
    /// Type modifier.
    pub type_mod: i32,
}

/// A Relation message: the shape of a table, sent before its first change in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The source's relation OID (what changes refer to).
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Replica identity setting (`d`efault, `n`othing, `f`ull, `i`ndex).
    pub replica_identity: u8,
    /// The columns, in order.
    pub columns: Vec<Column>,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A transaction starts.
    Begin {
        /// LSN of its commit record.
        final_lsn: u64,
        /// Commit timestamp (microseconds since 2000-01-01).
        commit_ts: i64,
        /// Top-level transaction id.
        xid: u32,
    },
    /// The transaction ends.
    Commit {
        /// LSN of the commit record.
        commit_lsn: u64,
        /// LSN just after it: where the next transaction starts (what the slot confirms).
        end_lsn: u64,
        /// Commit timestamp (microseconds since 2000-01-01).
        commit_ts: i64,
    },
    /// The origin of the transaction (it was itself replicated).
    Origin {
        /// The origin's commit LSN.
        lsn: u64,
        /// The origin's name.
        name: String,
    },
    /// A table's shape.
    Relation(Relation),
    /// A type's name (for types that are not built in).
    Type {
        /// Type OID.
        oid: u32,
        /// Schema.
        schema: String,
        /// Name.
        name: String,
    },
    /// A new row.
    Insert {
        /// Relation OID.
        rel: u32,
        /// The row.
        new: Vec<Value>,
    },
    /// A changed row.
    Update {
        /// Relation OID.
        rel: u32,
        /// The old key ('K') or the whole old row ('O'), when the key changed or identity is FULL.
        old: Option<Vec<Value>>,
        /// True when `old` is the whole old row rather than the key columns.
        old_is_full: bool,
        /// The new row.
        new: Vec<Value>,
    },
    /// A removed row.
    Delete {
        /// Relation OID.
        rel: u32,
        /// The key ('K') or the whole old row ('O').
        old: Vec<Value>,
        /// True when `old` is the whole old row.
        old_is_full: bool,
    },
    /// Tables emptied.
    Truncate {
        /// CASCADE (1) and RESTART IDENTITY (2) bits.
        options: u8,
        /// The relations.
        rels: Vec<u32>,
    },
    /// Anything else (logical messages, streaming): ignored by the follower.
    Other(u8),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: char,
}

impl<'a> Reader<'a> {
    fn err(&self, what: impl Into<String>) -> ParseError {
        ParseError {
            kind: self.kind,
            what: what.into(),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| self.err(format!("truncated at byte {}", self.pos)))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, ParseError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, ParseError> {
        Ok(self.u32()?.cast_signed())
    }
    fn u64(&mut self) -> Result<u64, ParseError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, ParseError> {
        Ok(self.u64()?.cast_signed())
    }
    fn cstr(&mut self) -> Result<String, ParseError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.err("unterminated string"))?;
        let s =
            String::from_utf8(rest[..nul].to_vec()).map_err(|_| self.err("string not UTF-8"))?;
        self.pos += nul + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Value>, ParseError> {
        let n = self.i16()?;
        let n = usize::try_from(n).map_err(|_| self.err("negative column count"))?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.i32()?;
                    let len = usize::try_from(len).map_err(|_| self.err("negative length"))?;
                    let b = self.take(len)?;
                    Value::Text(
                        String::from_utf8(b.to_vec()).map_err(|_| self.err("value not UTF-8"))?,
                    )
                }
                b'b' => return Err(self.err("binary values need protocol v2 'binary'; not asked")),
                other => return Err(self.err(format!("unknown tuple kind {:?}", other as char))),
            });
        }
        Ok(out)
    }
}

/// Decodes one message.
///
/// # Errors
/// [`ParseError`] for truncated or malformed bytes.
pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
    let Some(&tag) = buf.first() else {
        return Err(ParseError {
            kind: '?',
            what: "empty message".into(),
        });
    };
    let mut r = Reader {
        buf,
        pos: 1,
        kind: tag as char,
    };
    Ok(match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_ts: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_ts: r.i64()?,
            }
        }
        b'O' => Message::Origin {
            lsn: r.u64()?,
            name: r.cstr()?,
        },
        b'R' => {
            let oid = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::new();
            for _ in 0..n.max(0) {
                let flags = r.u8()?;
                columns.push(Column {
                    key: flags & 1 == 1,
                    name: r.cstr()?,
                    type_oid: r.u32()?,
                    type_mod: r.i32()?,
                });
            }
            Message::Relation(Relation {
                oid,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: r.u32()?,
            schema: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let rel = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert {
                    rel,
                    new: r.tuple()?,
                },
                k => return Err(r.err(format!("expected 'N', got {:?}", k as char))),
            }
        }
        b'U' => {
            let rel = r.u32()?;
            let mut old = None;
            let mut old_is_full = false;
            let mut k = r.u8()?;
            if k == b'K' || k == b'O' {
                old_is_full = k == b'O';
                old = Some(r.tuple()?);
                k = r.u8()?;
            }
            if k != b'N' {
                return Err(r.err(format!("expected 'N', got {:?}", k as char)));
            }
            Message::Update {
                rel,
                old,
                old_is_full,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.u32()?;
            let k = r.u8()?;
            if k != b'K' && k != b'O' {
                return Err(r.err(format!("expected 'K' or 'O', got {:?}", k as char)));
            }
            Message::Delete {
                rel,
                old_is_full: k == b'O',
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let options = r.u8()?;
            let mut rels = Vec::new();
            for _ in 0..n {
                rels.push(r.u32()?);
            }
            Message::Truncate { options, rels }
        }
        other => Message::Other(other),
    })
}

/// An LSN as PostgreSQL writes it (`0/1533BB0`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Parses PostgreSQL's LSN text (`0/1533BB0`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= 0xffff_ffff && lo <= 0xffff_ffff).then_some((hi << 32) | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from PostgreSQL 15 (pgoutput, proto_version 1) for:
    //   create type mood as enum ('ok','sad');
    //   create table t (id int primary key, b bytea, j jsonb, m mood, a int[], s text);
    //   create table c (k1 int, k2 text, v text, primary key(k1,k2));
    //   begin; insert into t values (1,'\x0102','{"a":1}','ok','{1,2}',null);
    //          insert into c values (1,'x','v'); commit;
    //   update t set s='hi' where id=1; update c set k2='y' where k1=1;
    //   delete from t where id=1; truncate c;
    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s).expect("hex")
    }

    #[test]
    fn parses_a_captured_transaction() {
        let begin = parse(&hex("420000000001533b80000304ec0eacaf46000002d8")).expect("begin");
        assert_eq!(
            begin,
            Message::Begin {
                final_lsn: 0x1533b80,
                commit_ts: 0x0003_04ec_0eac_af46,
                xid: 728
            }
        );
        let ty = parse(&hex("59000040017075626c6963006d6f6f6400")).expect("type");
        assert_eq!(
            ty,
            Message::Type {
                oid: 0x4001,
                schema: "public".into(),
                name: "mood".into()
            }
        );
        let Message::Relation(rel) = parse(&hex("52000040057075626c69630074006400060169640000000017ffffffff00620000000011ffffffff006a0000000edaffffffff006d0000004001ffffffff006100000003efffffffff00730000000019ffffffff")).expect("relation") else {
            panic!("not a relation");
        };
        assert_eq!(rel.to_string(), "public.t");
        assert_eq!(rel.replica_identity, b'd');
        let names: Vec<_> = rel.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "b", "j", "m", "a", "s"]);
        assert!(rel.columns[0].key && !rel.columns[1].key);
        assert_eq!(rel.columns[0].type_oid, 23);
        let ins = parse(&hex("49000040054e000674000000013174000000065c783031303274000000087b2261223a20317d74000000026f6b74000000057b312c327d6e")).expect("insert");
        assert_eq!(
            ins,
            Message::Insert {
                rel: 0x4005,
                new: vec![
                    Value::Text("1".into()),
                    Value::Text("\\x0102".into()),
                    Value::Text("{\"a\": 1}".into()),
                    Value::Text("ok".into()),
                    Value::Text("{1,2}".into()),
                    Value::Null,
                ]
            }
        );
        let commit =
            parse(&hex("43000000000001533b800000000001533bb0000304ec0eacaf46")).expect("commit");
        assert_eq!(
            commit,
            Message::Commit {
                commit_lsn: 0x1533b80,
                end_lsn: 0x1533bb0,
                commit_ts: 0x0003_04ec_0eac_af46
            }
        );
    }

    #[test]
    fn parses_updates_deletes_and_truncate() {
        let Message::Update { old, new, .. } = parse(&hex(
            "550000400c4b00037400000001317400000001786e4e0003740000000131740000000179740000000176",
        ))
        .expect("update") else {
            panic!("not an update");
        };
        assert_eq!(
            old,
            Some(vec![
                Value::Text("1".into()),
                Value::Text("x".into()),
                Value::Null
            ])
        );
        assert_eq!(new[1], Value::Text("y".into()));
        let plain = parse(&hex("55000040054e000674000000013174000000065c783031303274000000087b2261223a20317d74000000026f6b74000000057b312c327d74000000026869")).expect("update");
        assert!(matches!(plain, Message::Update { old: None, .. }));
        let del = parse(&hex("44000040054b00067400000001316e6e6e6e6e")).expect("delete");
        assert!(matches!(
            del,
            Message::Delete {
                rel: 0x4005,
                old_is_full: false,
                ..
            }
        ));
        assert_eq!(
            parse(&hex("5400000001000000400c")).expect("truncate"),
            Message::Truncate {
                options: 0,
                rels: vec![0x400c]
            }
        );
    }

    #[test]
    fn refuses_truncated_bytes() {
        assert!(parse(&hex("49000040054e0006740000")).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("0/1533BB0"), Some(0x1533bb0));
        assert_eq!(lsn_text(0x1_0000_00ff), "1/FF");
        assert_eq!(parse_lsn("x"), None);
    }
}
