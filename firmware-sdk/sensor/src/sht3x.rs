//! Sensirion SHT3x (SHT30, SHT31, SHT35) temperature and humidity sensor
//! over embedded-hal 1.0 I2C: single-shot measurements at high
//! repeatability, with each word's CRC-8 checked, soft reset and the status
//! register.
//!
//! Each 16-bit word the sensor sends is followed by its CRC-8 (polynomial
//! 0x31, initial value 0xFF; datasheet section 4.12): a reading whose CRC
//! does not match is an error ([`ErrorKind::Crc`]), never a wrong number.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{self, I2c};

use crate::error::{Error, ErrorKind};

/// The sensor's I2C address, set by its ADDR pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// ADDR to VSS: 0x44.
    Low = 0x44,
    /// ADDR to VDD: 0x45.
    High = 0x45,
}

/// Single shot, high repeatability, no clock stretching.
const MEASURE: [u8; 2] = [0x24, 0x00];
const SOFT_RESET: [u8; 2] = [0x30, 0xa2];
const READ_STATUS: [u8; 2] = [0xf3, 0x2d];
/// High repeatability takes at most 15.5 ms (datasheet table 4).
const MEASURE_US: u32 = 15_500;
/// Soft reset takes at most 1.5 ms.
const RESET_US: u32 = 1_500;

/// A measurement, as the sensor's raw words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// Raw temperature word.
    pub raw_temp: u16,
    /// Raw relative humidity word.
    pub raw_humidity: u16,
}

impl Measurement {
    /// Temperature, hundredths of a °C (integer maths, no FPU needed):
    /// -45 + 175 · raw / 65535.
    pub fn centi_celsius(&self) -> i32 {
        -4500 + ((17_500 * i64::from(self.raw_temp) + 32_767) / 65_535) as i32
    }

    /// Relative humidity, hundredths of a percent: 100 · raw / 65535.
    pub fn centi_percent(&self) -> u32 {
        ((10_000 * u64::from(self.raw_humidity) + 32_767) / 65_535) as u32
    }

    /// Temperature, °C, to 0.01.
    pub fn celsius(&self) -> f64 {
        f64::from(self.centi_celsius()) / 100.0
    }

    /// Relative humidity, %, to 0.01.
    pub fn percent(&self) -> f64 {
        f64::from(self.centi_percent()) / 100.0
    }
}

/// Why a measurement failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sht3xError<E> {
    /// The I2C transfer failed; [`Error::kind`] tells a NACK (no sensor,
    /// or still measuring) from a bus error.
    I2c(E),
    /// A word arrived with a CRC that does not match it.
    Crc {
        /// The word.
        word: u16,
        /// The CRC the sensor sent.
        sent: u8,
        /// The CRC of the word.
        computed: u8,
    },
}

impl<E: i2c::Error> Error for Sht3xError<E> {
    fn kind(&self) -> ErrorKind {
        match self {
            Sht3xError::I2c(e) => match e.kind() {
                i2c::ErrorKind::NoAcknowledge(_) => ErrorKind::NoAcknowledge,
                i2c::ErrorKind::Bus | i2c::ErrorKind::ArbitrationLoss | i2c::ErrorKind::Overrun => {
                    ErrorKind::Bus
                }
                _ => ErrorKind::Other,
            },
            Sht3xError::Crc { .. } => ErrorKind::Crc,
        }
    }
}

/// CRC-8 as the SHT3x computes it: polynomial 0x31, initial 0xFF.
pub fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0xffu8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// An SHT3x on an I2C bus, with a delay to wait out its measurements.
pub struct Sht3x<I, D> {
    i2c: I,
    delay: D,
    address: u8,
}

impl<I: I2c, D: DelayNs> Sht3x<I, D> {
    /// The sensor at `address`.
    pub fn new(i2c: I, delay: D, address: Address) -> Self {
        Sht3x {
            i2c,
            delay,
            address: address as u8,
        }
    }

    /// Take one measurement (high repeatability): about 16 ms.
    pub fn measure(&mut self) -> Result<Measurement, Sht3xError<I::Error>> {
        self.i2c
            .write(self.address, &MEASURE)
            .map_err(Sht3xError::I2c)?;
        self.delay.delay_us(MEASURE_US);
        let mut buf = [0u8; 6];
        self.i2c
            .read(self.address, &mut buf)
            .map_err(Sht3xError::I2c)?;
        Ok(Measurement {
            raw_temp: word(&buf[0..3])?,
            raw_humidity: word(&buf[3..6])?,
        })
    }

    /// Reset the sensor (its registers back to defaults).
    pub fn soft_reset(&mut self) -> Result<(), Sht3xError<I::Error>> {
        self.i2c
            .write(self.address, &SOFT_RESET)
            .map_err(Sht3xError::I2c)?;
        self.delay.delay_us(RESET_US);
        Ok(())
    }

    /// The status register (alert, heater, reset and checksum flags).
    pub fn status(&mut self) -> Result<u16, Sht3xError<I::Error>> {
        let mut buf = [0u8; 3];
        self.i2c
            .write_read(self.address, &READ_STATUS, &mut buf)
            .map_err(Sht3xError::I2c)?;
        word(&buf)
    }

    /// The bus and the delay back.
    pub fn release(self) -> (I, D) {
        (self.i2c, self.delay)
    }
}

/// A word and its CRC.
fn word<E>(b: &[u8]) -> Result<u16, Sht3xError<E>> {
    let w = u16::from_be_bytes([b[0], b[1]]);
    let computed = crc8(&b[..2]);
    if computed != b[2] {
        return Err(Sht3xError::Crc {
            word: w,
            sent: b[2],
            computed,
        });
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use embedded_hal::i2c::{ErrorKind as I2cKind, NoAcknowledgeSource};
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    use super::*;

    const ADDR: u8 = 0x44;

    /// A word as the sensor sends it, CRC included.
    fn sent(w: u16) -> [u8; 3] {
        let [a, b] = w.to_be_bytes();
        [a, b, crc8(&[a, b])]
    }

    #[test]
    fn the_datasheet_crc_example() {
        // Datasheet 4.12: CRC(0xBEEF) = 0x92.
        assert_eq!(crc8(&[0xbe, 0xef]), 0x92);
    }

    #[test]
    fn a_measurement_is_converted_and_checked() {
        // 0x6666 is 25.00 °C (-45 + 175 * 0.4); 0x8000 is 50.00 %RH.
        let mut data = vec![];
        data.extend(sent(0x6666));
        data.extend(sent(0x8000));
        let mut i2c = Mock::new(&[
            Transaction::write(ADDR, MEASURE.to_vec()),
            Transaction::read(ADDR, data),
        ]);
        let mut s = Sht3x::new(i2c.clone(), NoopDelay::new(), Address::Low);
        let m = s.measure().unwrap();
        assert_eq!(m.centi_celsius(), 2500);
        assert_eq!(m.centi_percent(), 5000);
        assert_eq!(m.celsius(), 25.0);
        i2c.done();
    }

    #[test]
    fn the_ends_of_the_range() {
        let lo = Measurement {
            raw_temp: 0,
            raw_humidity: 0,
        };
        let hi = Measurement {
            raw_temp: 0xffff,
            raw_humidity: 0xffff,
        };
        assert_eq!((lo.centi_celsius(), lo.centi_percent()), (-4500, 0));
        assert_eq!((hi.centi_celsius(), hi.centi_percent()), (13_000, 10_000));
    }

    #[test]
    fn a_bad_crc_is_an_error_not_a_number() {
        let mut data = vec![];
        data.extend(sent(0x6666));
        let mut hum = sent(0x8000);
        hum[2] ^= 0x01; // one flipped bit on the wire
        data.extend(hum);
        let mut i2c = Mock::new(&[
            Transaction::write(ADDR, MEASURE.to_vec()),
            Transaction::read(ADDR, data),
        ]);
        let mut s = Sht3x::new(i2c.clone(), NoopDelay::new(), Address::Low);
        let e = s.measure().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Crc);
        assert!(matches!(e, Sht3xError::Crc { word: 0x8000, .. }), "{e:?}");
        i2c.done();
    }

    #[test]
    fn a_nack_says_no_acknowledge() {
        // No sensor at the address: the write is not acknowledged.
        let nack = I2cKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let mut i2c = Mock::new(&[Transaction::write(ADDR + 1, MEASURE.to_vec()).with_error(nack)]);
        let mut s = Sht3x::new(i2c.clone(), NoopDelay::new(), Address::High);
        let e = s.measure().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoAcknowledge);
        // A bus error is told apart.
        let mut bus = Mock::new(&[
            Transaction::write(ADDR, MEASURE.to_vec()),
            Transaction::read(ADDR, vec![0; 6]).with_error(I2cKind::Bus),
        ]);
        let mut s2 = Sht3x::new(bus.clone(), NoopDelay::new(), Address::Low);
        assert_eq!(s2.measure().unwrap_err().kind(), ErrorKind::Bus);
        i2c.done();
        bus.done();
    }

    #[test]
    fn status_and_reset() {
        let mut i2c = Mock::new(&[
            Transaction::write(ADDR, SOFT_RESET.to_vec()),
            Transaction::write_read(ADDR, READ_STATUS.to_vec(), sent(0x8010).to_vec()),
        ]);
        let mut s = Sht3x::new(i2c.clone(), NoopDelay::new(), Address::Low);
        s.soft_reset().unwrap();
        assert_eq!(s.status().unwrap(), 0x8010);
        i2c.done();
    }
}
