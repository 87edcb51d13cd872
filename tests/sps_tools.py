"""Writing H.264 parameter sets for the tests: an SPS claiming another picture size than the
pictures it comes with (a hostile camera's), and filler NAL units."""

from __future__ import annotations

from camtrack.sources.h264 import NAL_SPS, _Bits, nal_type

#: NAL unit type of filler data (H.264 7.4.1.2.7): 0xFF bytes that carry nothing
NAL_FILLER = 12


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, count: int, value: int) -> None:
        self.bits += [(value >> i) & 1 for i in range(count - 1, -1, -1)]

    def ue(self, value: int) -> None:
        value += 1
        length = value.bit_length()
        self.u(length - 1, 0)
        self.u(length, value)

    def rbsp(self) -> bytes:
        """The bits, the stop bit and zeros to a byte, with emulation prevention (00 00 0x -> 00 00 03 0x)."""
        bits = [*self.bits, 1]
        bits += [0] * (-len(bits) % 8)
        raw = bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8))
        out, zeros = bytearray(), 0
        for byte in raw:
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def resize_sps(sps: bytes, width: int, height: int) -> bytes:
    """`sps` (Baseline or Main, progressive, no cropping: what x264 makes at sizes in whole
    macroblocks) saying `width` x `height` (multiples of 16) instead, everything else the same."""
    assert nal_type(sps) == NAL_SPS and sps[1] in (66, 77), "Baseline or Main only"
    bits = _Bits(sps)
    bits.u(24)
    bits.ue()  # seq_parameter_set_id
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()
    assert poc_type in (0, 2), "POC type 1 not written here"
    bits.ue()  # max_num_ref_frames
    bits.u(1)
    start = bits.pos
    bits.ue(), bits.ue()
    end = bits.pos
    # the RBSP's bits up to its stop bit
    data = bits.data
    total = len(data) * 8
    while total and not (data[(total - 1) >> 3] >> (7 - ((total - 1) & 7))) & 1:
        total -= 1
    total -= 1  # the stop bit
    reader = _Bits(sps)
    writer = BitWriter()
    writer.u(start, reader.u(start))
    reader.u(end - start)
    writer.ue(width // 16 - 1)
    writer.ue(height // 16 - 1)
    for _ in range(total - end):
        writer.u(1, reader.u(1))
    return sps[:1] + writer.rbsp()


def filler(size: int) -> bytes:
    """A filler NAL unit of `size` bytes (header, 0xFF bytes, the RBSP stop byte 0x80)."""
    return bytes([NAL_FILLER]) + b"\xff" * (size - 2) + b"\x80"
