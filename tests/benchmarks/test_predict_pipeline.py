"""The stand-in model that lets `benchmark-gpu --stages pipeline` time predict without a network."""

import cv2
import numpy as np
import torch

from ptxseg.benchmarks.predict_pipeline import (
    StandInModel,
    format_loop,
    jpeg_shape,
    stubbed_device_work,
)
from ptxseg.inference.predictor import Predictor


def test_stand_in_gives_empty_or_one_lesion_masks_for_any_input():
    x = torch.rand(3, 1, 40, 40)
    empty, lesion = StandInModel(40, lesion=False), StandInModel(40, lesion=True)
    assert empty(x).shape == (3, 1, 40, 40) and bool((empty(x) < 0).all())
    share = float((lesion(x) > 0).float().mean())
    assert 0.02 < share < 0.06  # a lesion's share of the image
    image = torch.rand(80, 80).numpy()
    assert not Predictor(empty).predict(image).mask.any()
    assert Predictor(lesion).predict(image).mask.mean() > 0.02


def test_format_loop():
    assert format_loop({"reads": 0.04, "writers": 12.25}) == "reads 0.0, writers 12.2"
    assert format_loop(None) == ""


def test_stubbed_device_work_answers_with_zeros_of_the_right_shapes():
    ok, jpeg = cv2.imencode(".jpg", np.full((37, 53), 200, np.uint8))
    frame = jpeg.tobytes()
    assert ok and jpeg_shape(frame) == (37, 53) and jpeg_shape(b"no jpeg") == (0, 0)
    with stubbed_device_work(16):
        from ptxseg.data import device_images
        from ptxseg.inference import device_batch, predictor

        (image,) = device_images.decode_frames([frame], "cpu")
        assert image.shape == (37, 53) and image.dtype == torch.uint8 and not image.any()
        inputs = device_images.to_model_inputs([image, image], 16)
        assert inputs.shape == (2, 16, 16)
        stand_in = predictor.Predictor(StandInModel(16, lesion=True))
        assert not stand_in.probabilities_on_device(inputs).any()  # stubbed: zeros
        masks, peaks = predictor.full_size_masks_on_device(None, [(37, 53)], None)
        assert masks[0].shape == (37, 53) and peaks.shape == (1,)
        assert device_batch.pack_bits_many(masks * 2).shape == (2 * ((37 * 53 + 7) // 8),)
    (real,) = device_images.decode_frames([frame], "cpu")  # the real decoder again
    assert int(real.float().mean()) in range(195, 206)
