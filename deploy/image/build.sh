#!/usr/bin/env bash
# Build a bootable arm64 Debian image with Weir installed and enabled, from
# Debian packages only (debootstrap, linux-image-arm64, raspi-firmware) and
# the weir arm64 .deb. The result can be written to an SD card for a
# Raspberry Pi 3/4 (64-bit) and boots under qemu-system-aarch64.
#
#   deploy/image/build.sh OUT_DIR WEIR_ARM64_DEB
#
# `cargo xtask image` builds the package and runs this. Needs root (file
# ownership inside the image), debootstrap, qemu-user-static (the arm64
# package scripts run under it through binfmt_misc, registered here if it
# is not), e2fsprogs, dosfstools, mtools and fdisk.
#
# Environment:
#   SUITE   Debian suite (default bookworm; glibc >= 2.34 is needed)
#   MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   SIZE_MB whole image size in MiB (default 2048; the root file system
#           takes all but the 256 MiB boot partition)
#
# Output in OUT_DIR:
#   weir-arm64.img      partitioned image: 1 = FAT32 "RASPIFIRM" (Pi
#                       firmware, kernel, initrd, cmdline.txt, config.txt;
#                       the place for weir.toml and authorized_keys before
#                       first boot), 2 = ext4 "RASPIROOT"
#   weir-arm64.img.sha256
#   vmlinuz, initrd.img the image's own kernel and initrd, for QEMU's -kernel
#   cache/              the Debian base system, reused while the package
#                       list and this script's base recipe stay the same
set -euo pipefail

out=${1:?usage: build.sh OUT_DIR WEIR_ARM64_DEB}
deb=${2:?usage: build.sh OUT_DIR WEIR_ARM64_DEB}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
size_mb=${SIZE_MB:-2048}
boot_mb=256
boot_start_mb=8
here=$(cd "$(dirname "$0")" && pwd)

# What the board runs besides weir: systemd with networkd/resolved/timesyncd
# (a Pi has no RTC; TLS needs the time), SSH for headless access, the local
# MQTT broker sensors publish to, and the kernel and Pi firmware.
packages=(
    systemd-sysv udev kmod dbus iproute2 systemd-timesyncd systemd-resolved
    openssh-server ca-certificates mosquitto
    linux-image-arm64 initramfs-tools zstd raspi-firmware
    dosfstools e2fsprogs
)

say() { echo "build-image: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (files in the image keep their owners)"
[ -f "$deb" ] || die "no package at $deb (cargo xtask deb builds it)"
for tool in debootstrap mkfs.ext4 mkfs.vfat mcopy sfdisk; do
    command -v "$tool" >/dev/null || die "$tool is missing (cargo xtask image installs it)"
done

# arm64 programs (package scripts) run under qemu-user through binfmt_misc.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ -f "$conf" ] || die "$conf missing: install qemu-user-static"
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
            die "cannot mount binfmt_misc"
    fi
    grep -v '^#' "$conf" > /proc/sys/fs/binfmt_misc/register
    say "registered qemu-aarch64 with binfmt_misc"
fi

mkdir -p "$out/cache"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/work.XXXXXX")
root=$work/root
unmount() {
    for m in "$root/proc" "$root/sys" "$root/dev/pts" "$root/dev"; do
        if mountpoint -q "$m" 2>/dev/null; then umount -l "$m"; fi
    done
}
cleanup() {
    unmount
    rm -rf "$work"
}
trap cleanup EXIT

# 1. The Debian base, cached as a tarball.
key=$( (echo "$suite $mirror ${packages[*]}"; sed -n '/# base-recipe$/,/# end-base-recipe$/p' "$0") | sha256sum | cut -c1-16)
base=$out/cache/base-$suite-arm64-$key.tar
if [ ! -f "$base" ]; then
    say "debootstrap $suite arm64 (a few minutes; cached in $base)"
    # base-recipe
    debootstrap --arch=arm64 --variant=minbase \
        --components=main,non-free-firmware \
        --include="$(IFS=,; echo "${packages[*]}")" \
        "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { tail -30 "$work/debootstrap.log"; tail -30 "$root/debootstrap/debootstrap.log" 2>/dev/null; die "debootstrap failed"; }
    printf 'deb %s %s main non-free-firmware\ndeb http://security.debian.org/debian-security %s-security main non-free-firmware\n' \
        "$mirror" "$suite" "$suite" > "$root/etc/apt/sources.list"
    # end-base-recipe
    tar -C "$root" -cf "$base.tmp" . && mv "$base.tmp" "$base"
    rm -rf "$root"
fi
mkdir -p "$root"
tar -C "$root" -xf "$base"

# 2. Weir and the board's configuration.
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"
}
# Nothing starts inside the build.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"

cp -a "$here/overlay/." "$root/"
cat > "$root/etc/fstab" <<'EOF'
# <file system>   <mount point>   <type> <options>         <dump> <pass>
LABEL=RASPIROOT   /               ext4   rw,noatime        0      1
LABEL=RASPIFIRM   /boot/firmware  vfat   rw,noatime,umask=0077 0  2
EOF
echo weir-gateway > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tweir-gateway\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"

cp "$deb" "$root/tmp/weir.deb"
in_root dpkg -i /tmp/weir.deb >"$work/dpkg.log" 2>&1 ||
    { cat "$work/dpkg.log"; die "dpkg -i weir failed"; }
rm "$root/tmp/weir.deb"
in_root systemctl enable weir.service weir-bootconfig.service systemd-networkd.service \
    systemd-resolved.service systemd-timesyncd.service ssh.service mosquitto.service \
    >/dev/null 2>&1
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

# The Pi's boot files again (cmdline.txt from /etc/default/raspi-firmware:
# root by label, no serial console). The kernel and its initrd (made by
# debootstrap; MODULES=most has virtio and the SD card drivers) stay.
kver=$(basename "$(ls -d "$root"/lib/modules/* | sort -V | tail -1)")
in_root env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$kver" \
    >"$work/firmware.log" 2>&1 ||
    { cat "$work/firmware.log"; die "raspi-firmware could not fill /boot/firmware"; }
[ -f "$root/boot/firmware/cmdline.txt" ] || die "no cmdline.txt in /boot/firmware"
grep -q 'LABEL=RASPIROOT' "$root/boot/firmware/cmdline.txt" || die "cmdline.txt has another root"

# Nothing unique to one board: machine id, SSH host keys (made at first
# boot by weir-bootconfig), logs, apt lists.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
rm -f "$root/usr/sbin/policy-rc.d"
in_root apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/*
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out/initrd.img"
weir_version=$(in_root dpkg-query -W -f '${Version}' weir)
unmount

# 3. File systems and the partitioned image, built from directories: no
# loop devices.
root_mb=$((size_mb - boot_start_mb - boot_mb))
[ "$root_mb" -ge 1024 ] || die "SIZE_MB=$size_mb leaves under 1 GiB for the root file system"
mkfs.vfat -n RASPIFIRM -F 32 -C "$work/boot.fat" $((boot_mb * 1024)) >/dev/null
mcopy -s -p -i "$work/boot.fat" "$root"/boot/firmware/* ::/
mv "$root/boot/firmware" "$work/firmware" && mkdir -m 0755 "$root/boot/firmware"
mkfs.ext4 -q -L RASPIROOT -d "$root" -E root_owner=0:0 "$work/root.ext4" "${root_mb}M"
img=$out/weir-arm64.img
rm -f "$img"
truncate -s "${size_mb}M" "$img"
sfdisk -q "$img" <<EOF
label: dos
start=${boot_start_mb}MiB, size=${boot_mb}MiB, type=c, bootable
start=$((boot_start_mb + boot_mb))MiB, type=83
EOF
dd if="$work/boot.fat" of="$img" bs=1M seek="$boot_start_mb" conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$img" bs=1M seek=$((boot_start_mb + boot_mb)) conv=notrunc,sparse status=none
(cd "$out" && sha256sum weir-arm64.img > weir-arm64.img.sha256)
say "$img: $size_mb MiB (on disk $(du -m "$img" | cut -f1) MiB), Debian $suite, kernel $kver, weir $weir_version"
