"""benchmark-data: the references agree with ptxseg, and the table."""

import numpy as np

from ptxseg.benchmarks.data_throughput import (
    format_markdown,
    realistic_masks,
    reference_decode,
    reference_encode,
    write_data_table,
)
from ptxseg.data.rle import rle_decode, rle_encode


def test_benchmark_references_agree_with_ptxseg():
    for mask in realistic_masks(3, size=128):
        rle = rle_encode(mask)
        assert reference_encode(mask) == rle
        assert np.array_equal(reference_decode(rle, 128, 128) > 0, rle_decode(rle, 128, 128))
    table = format_markdown(
        [
            {
                "benchmark": "x",
                "ptxseg": 2.0,
                "reference": 1.0,
                "unit": "rows/s",
                "speed-up": 2.0,
                "detail": "d",
            }
        ]
    )
    assert "| x | 2 | 1 | rows/s | 2 | d |" in table and "| speed-up (x) |" in table


def test_written_table_names_the_machine_and_the_reference(tmp_path):
    row = {"benchmark": "x", "ptxseg": 2.04, "reference": 1.0, "unit": "u", "speed-up": 2.04}
    write_data_table([dict(row, detail="d")], tmp_path)
    md = (tmp_path / "data-benchmark.md").read_text()
    assert "instruction sets:" in md and "- baseline: the reference named in each row" in md
    assert "| x | 2 | 1 | u | 2 | d |" in md
    assert (tmp_path / "data-benchmark.csv").read_text().splitlines()[1] == "x,2.0,1.0,u,2.0,d"


def test_loader_row_compares_raw_rows_with_float_items(tmp_path):
    from siim_folders import make_siim_folder

    from ptxseg.benchmarks.data_throughput import bench_loader

    images, csv_path, _ = make_siim_folder(tmp_path / "siim", n=12, size=64)
    row = bench_loader(images, csv_path, size=32, batch=4, workers=0)
    assert row["ptxseg"] > 0 and row["reference"] > 0 and row["unit"] == "images/s"
    assert row["speed-up"] == row["ptxseg"] / row["reference"]
    assert "uint8 rows" in row["detail"] and "float32 items" in row["detail"]
