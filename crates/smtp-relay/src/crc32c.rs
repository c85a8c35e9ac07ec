//! CRC-32C (Castagnoli), the checksum of every spool record.
//!
//! The polynomial is the one iSCSI (RFC 3720 §B.4), ext4 and SCTP use.
//! Eight octets at a time with eight tables ("slicing-by-8"), without
//! `unsafe` or CPU-specific instructions: every record is checksummed on
//! the commit path, so the byte-at-a-time loop showed in profiles.

/// The reflected Castagnoli polynomial.
const POLYNOMIAL: u32 = 0x82F6_3B78;

/// `TABLES[0]` is the byte-at-a-time table; `TABLES[k][n]` is the CRC of
/// octet `n` followed by `k` zero octets.
const TABLES: [[u32; 256]; 8] = {
    let mut tables = [[0u32; 256]; 8];
    let mut n = 0;
    while n < 256 {
        let mut crc = n as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLYNOMIAL
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][n] = crc;
        n += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut n = 0;
        while n < 256 {
            let previous = tables[k - 1][n];
            tables[k][n] = (previous >> 8) ^ tables[0][(previous & 0xff) as usize];
            n += 1;
        }
        k += 1;
    }
    tables
};

/// A running CRC-32C.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Crc32c(u32);

impl Crc32c {
    /// A checksum over nothing yet.
    pub(crate) fn new() -> Self {
        Self(!0)
    }

    /// Adds `bytes`.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        let t = &TABLES;
        let mut crc = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let low = crc ^ u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let high = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            crc = t[7][(low & 0xff) as usize]
                ^ t[6][((low >> 8) & 0xff) as usize]
                ^ t[5][((low >> 16) & 0xff) as usize]
                ^ t[4][(low >> 24) as usize]
                ^ t[3][(high & 0xff) as usize]
                ^ t[2][((high >> 8) & 0xff) as usize]
                ^ t[1][((high >> 16) & 0xff) as usize]
                ^ t[0][(high >> 24) as usize];
        }
        for &byte in chunks.remainder() {
            crc = t[0][((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
        }
        self.0 = crc;
    }

    /// The checksum of everything added.
    pub(crate) fn finish(self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 3720 §B.4 and the common check value for "123456789".
        let check = |bytes: &[u8]| {
            let mut crc = Crc32c::new();
            crc.update(bytes);
            crc.finish()
        };
        assert_eq!(check(b"123456789"), 0xE306_9283);
        assert_eq!(check(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(check(&[0xffu8; 32]), 0x62A8_AB43);
        let mut split = Crc32c::new();
        split.update(b"1234");
        split.update(b"56789");
        assert_eq!(split.finish(), 0xE306_9283);
        // RFC 3720 §B.4: 32 octets counting up and counting down (the
        // eight-octet path with no remainder).
        let up: Vec<u8> = (0u8..32).collect();
        let down: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(check(&up), 0x46DD_794E);
        assert_eq!(check(&down), 0x113F_DB5C);
    }

    /// The bitwise definition, one bit at a time.
    fn bitwise(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLYNOMIAL
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn every_length_and_split_agrees_with_the_bitwise_definition() {
        let data: Vec<u8> = (0..200u32)
            .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            let mut whole = Crc32c::new();
            whole.update(&data[..len]);
            assert_eq!(whole.finish(), bitwise(&data[..len]), "length {len}");
            let cut = len / 3;
            let mut split = Crc32c::new();
            split.update(&data[..cut]);
            split.update(&data[cut..len]);
            assert_eq!(
                split.finish(),
                bitwise(&data[..len]),
                "length {len} cut {cut}"
            );
        }
    }
}
