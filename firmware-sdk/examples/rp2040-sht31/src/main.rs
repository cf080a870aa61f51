//! A Weir sensor node on a Raspberry Pi Pico: reads an SHT31 on I2C0
//! (GP4 SDA, GP5 SCL) every `interval` and sends the reading over UART0
//! (GP0 TX, GP1 RX, 115200 8N1) as Weir wire frames, answering the
//! gateway's commands (`ping`, `identify`, `set_interval`) in between.
//! `identify` blinks the on-board LED (GP25).
//!
//! Build: `cargo build --release` here; see firmware-sdk/README.md for the
//! wiring to a Raspberry Pi's UART.
#![no_std]
#![no_main]

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::OutputPin;
use panic_halt as _;
use rp2040_hal as hal;

use hal::Clock;
use hal::fugit::RateExtU32;
use hal::gpio::{FunctionI2C, FunctionUart, Pins, PullUp};
use hal::pac;
use hal::uart::{
    DataBits, Enabled, StopBits, UartConfig, UartDevice, UartPeripheral, ValidUartPinout,
};
use weir_sensor::sht3x::{Address, Sht3x};
use weir_sensor::{Command, Error as _, Identity, Node, Reading};

/// The second-stage bootloader, for the Pico's W25Q080 flash.
#[unsafe(link_section = ".boot2")]
#[used]
pub static BOOT2: [u8; 256] = rp2040_boot2::BOOT_LOADER_W25Q080;

const XTAL_HZ: u32 = 12_000_000;
/// This node's id on the line (the wire header's sensor id).
const SENSOR_ID: u32 = 17;
/// The field `id` of its readings.
const NAME: &str = "s17";
const IDENTITY: Identity = Identity {
    model: "pico-sht31",
    firmware: env!("CARGO_PKG_VERSION"),
};

/// The HAL's UART as embedded-io's `Read`, `ReadReady` and `Write`.
struct Uart<D: UartDevice, P: ValidUartPinout<D>>(UartPeripheral<Enabled, D, P>);

impl<D: UartDevice, P: ValidUartPinout<D>> embedded_io::ErrorType for Uart<D, P> {
    type Error = embedded_io::ErrorKind;
}

impl<D: UartDevice, P: ValidUartPinout<D>> embedded_io::Read for Uart<D, P> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.0.read_raw(buf) {
                Ok(n) => return Ok(n),
                Err(nb::Error::WouldBlock) => continue,
                // Overrun, break, parity or framing: the frame's CRC
                // catches what was lost.
                Err(nb::Error::Other(_)) => return Err(embedded_io::ErrorKind::InvalidData),
            }
        }
    }
}

impl<D: UartDevice, P: ValidUartPinout<D>> embedded_io::ReadReady for Uart<D, P> {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(self.0.uart_is_readable())
    }
}

impl<D: UartDevice, P: ValidUartPinout<D>> embedded_io::Write for Uart<D, P> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.0.write_full_blocking(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[hal::entry]
fn main() -> ! {
    let mut pac = pac::Peripherals::take().unwrap();
    let mut watchdog = hal::Watchdog::new(pac.WATCHDOG);
    let clocks = hal::clocks::init_clocks_and_plls(
        XTAL_HZ,
        pac.XOSC,
        pac.CLOCKS,
        pac.PLL_SYS,
        pac.PLL_USB,
        &mut pac.RESETS,
        &mut watchdog,
    )
    .ok()
    .unwrap();
    let sio = hal::Sio::new(pac.SIO);
    let pins = Pins::new(
        pac.IO_BANK0,
        pac.PADS_BANK0,
        sio.gpio_bank0,
        &mut pac.RESETS,
    );
    let mut timer = hal::Timer::new(pac.TIMER, &mut pac.RESETS, &clocks);
    let mut led = pins.gpio25.into_push_pull_output();

    let uart_pins = (
        pins.gpio0.into_function::<FunctionUart>(),
        pins.gpio1.into_function::<FunctionUart>(),
    );
    let uart = UartPeripheral::new(pac.UART0, uart_pins, &mut pac.RESETS)
        .enable(
            UartConfig::new(115_200.Hz(), DataBits::Eight, None, StopBits::One),
            clocks.peripheral_clock.freq(),
        )
        .unwrap();

    let sda = pins.gpio4.reconfigure::<FunctionI2C, PullUp>();
    let scl = pins.gpio5.reconfigure::<FunctionI2C, PullUp>();
    let i2c = hal::I2C::i2c0(
        pac.I2C0,
        sda,
        scl,
        100.kHz(),
        &mut pac.RESETS,
        &clocks.system_clock,
    );

    let mut sht = Sht3x::new(i2c, timer, Address::Low);
    let mut node = Node::new(Uart(uart), SENSOR_ID, 5_000, IDENTITY);
    let mut failures = 0u32;
    loop {
        let mut buf = [0u8; 96];
        let reading = match sht.measure() {
            Ok(m) => Reading::new(&mut buf)
                .text("id", NAME)
                .float("temp_c", m.celsius())
                .float("hum", m.percent())
                .uint("errors", u64::from(failures))
                .finish(),
            // A missing sensor (NACK) or a corrupt reading (CRC): say so,
            // as an event, and carry on.
            Err(e) => {
                failures += 1;
                Reading::new(&mut buf)
                    .text("id", NAME)
                    .text(
                        "error",
                        match e.kind() {
                            weir_sensor::ErrorKind::NoAcknowledge => "sensor not answering",
                            weir_sensor::ErrorKind::Crc => "reading failed its CRC",
                            _ => "I2C bus error",
                        },
                    )
                    .finish()
            }
        };
        if let Ok(r) = reading {
            let _ = node.send(r);
        }
        // Wait out the interval in 10 ms steps, answering the gateway.
        let mut waited = 0;
        while waited < node.interval_ms() {
            if let Ok(Some(Command::Identify)) = node.poll() {
                for _ in 0..3 {
                    let _ = led.set_high();
                    timer.delay_ms(100);
                    let _ = led.set_low();
                    timer.delay_ms(100);
                }
            }
            timer.delay_ms(10);
            waited += 10;
        }
    }
}
