//! The protobuf wire format: varints, keys and length-delimited fields
//! (<https://protobuf.dev/programming-guides/encoding/>).
use super::schema::Scalar;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

impl Scalar {
    /// How the Kubernetes protos (proto2) write this type.
    pub fn wire(self) -> WireType {
        match self {
            Self::String | Self::Bytes => WireType::Len,
            Self::Bool | Self::Int32 | Self::Int64 => WireType::Varint,
            Self::Double => WireType::Fixed64,
            Self::Float => WireType::Fixed32,
        }
    }

    /// Numbers may also arrive packed into one length-delimited run.
    pub fn packable(self) -> bool {
        self.wire() != WireType::Len
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn done(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!(
                "truncated: {n} bytes wanted, {} left",
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn varint(&mut self) -> Result<u64, String> {
        let mut out = 0u64;
        for i in 0..10 {
            let b = self.take(1)?[0];
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err("a varint longer than 10 bytes".into())
    }

    pub fn key(&mut self) -> Result<(u32, WireType), String> {
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::Len,
            5 => WireType::Fixed32,
            other => return Err(format!("unsupported wire type {other}")),
        };
        let number = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        if number == 0 {
            return Err("field number 0".into());
        }
        Ok((number, wire))
    }

    pub fn len_delimited(&mut self) -> Result<&'a [u8], String> {
        let n = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
        self.take(n)
    }

    /// A length-delimited field's bytes, refusing other wire types.
    pub fn bytes_field(&mut self, wire: WireType) -> Result<&'a [u8], String> {
        if wire != WireType::Len {
            return Err(format!("wire type {wire:?} where a message was expected"));
        }
        self.len_delimited()
    }

    pub fn fixed64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub fn fixed32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn skip(&mut self, wire: WireType) -> Result<(), String> {
        match wire {
            WireType::Varint => self.varint().map(drop),
            WireType::Fixed64 => self.take(8).map(drop),
            WireType::Len => self.len_delimited().map(drop),
            WireType::Fixed32 => self.take(4).map(drop),
        }
    }
}

#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, number: u32, wire: WireType) {
        let w = match wire {
            WireType::Varint => 0,
            WireType::Fixed64 => 1,
            WireType::Len => 2,
            WireType::Fixed32 => 5,
        };
        self.varint(u64::from(number) << 3 | w);
    }

    pub fn varint_field(&mut self, number: u32, v: u64) {
        self.key(number, WireType::Varint);
        self.varint(v);
    }

    pub fn len_field(&mut self, number: u32, bytes: &[u8]) {
        self.key(number, WireType::Len);
        self.varint(bytes.len() as u64);
        self.buf.extend_from_slice(bytes);
    }

    pub fn fixed64_field(&mut self, number: u32, v: u64) {
        self.key(number, WireType::Fixed64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn fixed32_field(&mut self, number: u32, v: u32) {
        self.key(number, WireType::Fixed32);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_including_negative_int32() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX, (-1i64) as u64] {
            let mut w = Writer::default();
            w.varint_field(3, v);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            assert_eq!(r.key().unwrap(), (3, WireType::Varint));
            assert_eq!(r.varint().unwrap(), v);
            assert!(r.done());
        }
        assert!(Reader::new(&[0x80]).varint().is_err(), "truncated");
        assert!(Reader::new(&[0x0b]).key().is_err(), "wire type 3 (groups)");
    }
}
