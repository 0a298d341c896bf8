# desanet A/B boot on a Raspberry Pi: the firmware starts U-Boot (Debian's u-boot-rpi),
# U-Boot runs this script (boot.scr, made by images/mkdisk with mkimage).
# The slot comes from the state files in EFI/desanet/state/ on this FAT partition,
# which `desanet update install|bless` write (gateway/update/ubootstate.py): a slot on
# trial is booted while it has tries left, each try counted down here first, and the
# good slot otherwise. See docs/updates.md. @DISK_ID@ and @CMDLINE@ are filled in by
# mkdisk. No `saveenv`: U-Boot's own environment is never written.
setenv desanet_state EFI/desanet/state
setenv desanet_good
setenv desanet_try
setenv desanet_tries 0
setenv desanet_trial
setenv desanet_slot
# Room for the kernel (Image, ~33 MiB) below the initrd; both below 128 MiB.
setenv kernel_addr_r 0x00200000
setenv ramdisk_addr_r 0x03000000
# boot.txt, or its copy when a power cut spoilt it (written first, so one is whole).
for name in boot.txt boot-copy.txt; do
    if test "${desanet_good}" != a && test "${desanet_good}" != b && load mmc 0:1 ${ramdisk_addr_r} ${desanet_state}/${name}; then
        if test "${filesize}" != 0; then
            env import -t ${ramdisk_addr_r} ${filesize} desanet_good desanet_try
        fi
    fi
done
if test "${desanet_good}" != b; then
    setenv desanet_good a
fi
if test "${desanet_try}" = a || test "${desanet_try}" = b; then
    if load mmc 0:1 ${ramdisk_addr_r} ${desanet_state}/tries.txt; then
        if test "${filesize}" != 0; then
            env import -t ${ramdisk_addr_r} ${filesize} desanet_tries
        fi
    fi
    if itest ${desanet_tries} -gt 0; then
        setexpr desanet_tries ${desanet_tries} - 1
        env export -t ${ramdisk_addr_r} desanet_tries
        # Only a try that is counted is taken: if the card refuses the write, the good slot.
        if fatwrite mmc 0:1 ${ramdisk_addr_r} ${desanet_state}/tries.txt ${filesize}; then
            setenv desanet_slot ${desanet_try}
            setenv desanet_trial desanet.trial=1
        fi
    fi
fi
if test -z "${desanet_slot}"; then
    setenv desanet_slot ${desanet_good}
fi
if test "${desanet_slot}" = b; then
    setenv desanet_part 03
else
    setenv desanet_slot a
    setenv desanet_part 02
fi
echo "desanet-boot: slot ${desanet_slot} (good ${desanet_good}, trial ${desanet_try}, tries left ${desanet_tries})"
setenv bootargs "root=PARTUUID=@DISK_ID@-${desanet_part} ro rootwait panic=10 desanet.slot=${desanet_slot} desanet.loader=uboot ${desanet_trial} @CMDLINE@"
echo "desanet-boot: bootargs ${bootargs}"
if load mmc 0:1 ${kernel_addr_r} EFI/desanet/${desanet_slot}/vmlinuz; then
    # The initrd goes right above the kernel's room: a larger kernel would be overwritten.
    if itest ${filesize} -ge 0x2c00000; then
        echo "desanet-boot: the kernel is larger than its room below the initrd"
    elif load mmc 0:1 ${ramdisk_addr_r} EFI/desanet/${desanet_slot}/initrd.img; then
        booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdt_addr}
    fi
fi
# A slot whose kernel is missing or does not start: reset, so a trial counts down.
echo "desanet-boot: slot ${desanet_slot} did not start; resetting"
reset
