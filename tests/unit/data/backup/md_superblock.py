"""Write an md v1.2 superblock and its internal bitmap superblock into a leg image.

Only for tests and recordings, on hosts whose kernel has no md driver (where
``mdadm --create`` fails with "unexpected failure opening /dev/md127"): the
layout is Linux's ``struct mdp_superblock_1`` (include/uapi/linux/raid/md_p.h)
and mdadm's ``bitmap_super_t`` (bitmap.h), checksum as mdadm's
``calc_sb_1_csum``. Checked against a real superblock: ``write_lab_leg0``
reproduces lab node2's leg0 of ``tests/recordings/md/lab-node2-clean`` so that
mdadm 4.2's ``--examine --export`` prints byte for byte what the lab recorded
(record.py checks it every time it runs).
"""

import struct

SECTOR = 512
MAX_SECTOR = 0xFFFFFFFFFFFFFFFF
SB_MAGIC = 0xA92B4EFC
BITMAP_MAGIC = 0x6D746962
ROLE_SPARE = 0xFFFF
ROLE_FAULTY = 0xFFFE
FEATURE_BITMAP = 0x1
FEATURE_RECOVERY = 0x2
FEATURE_BAD_BLOCKS = 0x8
SUPER_OFFSET = 8  # sectors: metadata 1.2 sits 4 KiB from the start


def _checksum(sb):
    total = 0
    for i in range(0, len(sb) - len(sb) % 4, 4):
        total += struct.unpack_from("<I", sb, i)[0]
    if len(sb) % 4 == 2:
        total += struct.unpack_from("<H", sb, len(sb) - 2)[0]
    return ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF


def superblock(
    *, set_uuid, name, ctime, utime, events, size, data_offset, data_size, dev_number, dev_uuid, roles,
    feature=FEATURE_BITMAP, bitmap_offset=8, bblog_offset=16, bblog_size=8, resync_offset=MAX_SECTOR,
    recovery_offset=0, level=1,
):  # fmt: skip
    """The 256 bytes of mdp_superblock_1 plus 2 bytes per role, checksummed."""
    head = struct.pack(
        "<IIII16s32sQIIQIIiIQIIII",
        SB_MAGIC, 1, feature, 0, set_uuid, name.encode().ljust(32, b"\0"),
        ctime, level, 0, size, 0, len(roles), bitmap_offset,
        0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    dev = struct.pack(
        "<QQQQII16sBBHi",
        data_offset, data_size, SUPER_OFFSET, recovery_offset, dev_number, 0, dev_uuid, 0, 0,
        bblog_size, bblog_offset,
    ).ljust(64, b"\0")  # fmt: skip
    state = struct.pack("<QQQII", utime, events, resync_offset, 0, len(roles)).ljust(64, b"\0")
    sb = bytearray(head + dev + state + b"".join(struct.pack("<H", r) for r in roles))
    assert len(head) == 128 and len(head + dev + state) == 256
    struct.pack_into("<I", sb, 216, _checksum(sb))
    return bytes(sb)


def bitmap(*, set_uuid, events, sync_size, chunksize=64 * 1024 * 1024):
    """bitmap_super_t, version 4, daemon_sleep 5 s."""
    bsb = struct.pack(
        "<II16sQQQIIIIII", BITMAP_MAGIC, 4, set_uuid, events, events, sync_size, 0, chunksize, 5, 0, 0, 0
    )
    return bsb.ljust(256, b"\0")


def write(path, data_offset_sectors=2048, **kw):
    """Put a superblock (and a bitmap when ``feature`` has bit 0) into image or device ``path``.

    ``size`` and ``data_size`` default to everything after the data offset.
    """
    with open(path, "r+b") as fh:
        fh.seek(0, 2)
        sectors = fh.tell() // SECTOR
        kw.setdefault("data_size", sectors - data_offset_sectors)
        kw.setdefault("size", kw["data_size"])
        sb = superblock(data_offset=data_offset_sectors, **kw)
        fh.seek(SUPER_OFFSET * SECTOR)
        fh.write(sb)
        if kw.get("feature", FEATURE_BITMAP) & FEATURE_BITMAP:
            fh.seek((SUPER_OFFSET + kw.get("bitmap_offset", 8)) * SECTOR)
            fh.write(bitmap(set_uuid=kw["set_uuid"], events=kw["events"], sync_size=kw["size"]))
    return {"data_offset": data_offset_sectors * SECTOR, "size": kw["size"] * SECTOR}


# lab node2's array of tests/recordings/md/lab-node2-clean (from its --examine --export)
LAB_UUID = bytes.fromhex("6a26659a350b5f59385754c06857aa6a")
LAB_DEV_UUIDS = (bytes.fromhex("cb6ee29684cb942a00ed5ea35a7455f3"), bytes.fromhex("393b9d7f3fd653a1b80306c7c42a5bdb"))


def lab_fields(dev_number, **over):
    """The fields of lab node2's leg ``dev_number`` (a 256 MiB LV), with overrides."""
    fields = {
        "set_uuid": LAB_UUID, "name": "node2:mdrec", "ctime": 1795479500, "utime": 1795479614,
        "events": 19, "dev_number": dev_number, "dev_uuid": LAB_DEV_UUIDS[dev_number], "roles": [0, 1],
    }  # fmt: skip
    fields.update(over)
    return fields
