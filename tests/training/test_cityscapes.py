import numpy as np

from training.data import cityscapes


def test_official_mapping_examples():
    # labelIds from the official table: road 7, sidewalk 8, car 26, bicycle 33; 0..6 and e.g.
    # 9 (parking), 14 (guard rail), 34 (license plate, id -1 in the table) are ignored.
    ids = np.array([[7, 8, 26, 33], [0, 9, 14, 255]], dtype=np.uint8)
    expected = np.array([[0, 1, 13, 18], [255, 255, 255, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(cityscapes.label_ids_to_train_ids(ids), expected)


def test_round_trip_over_all_train_ids():
    train = np.arange(19, dtype=np.uint8)
    np.testing.assert_array_equal(cityscapes.label_ids_to_train_ids(cityscapes.train_ids_to_label_ids(train)), train)


def test_nineteen_classes_with_colours():
    assert len(cityscapes.CLASSES) == 19 == len(cityscapes.PALETTE) == len(cityscapes.LABEL_TO_TRAIN)
    assert tuple(cityscapes.PALETTE[0]) == (128, 64, 128)  # road
