from imgclf.zoo.labels import get_labels, imagenet_labels


def test_imagenet_labels_in_index_order_and_unique():
    labels = imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[0] == "tench" and labels[281] == "tabby" and labels[285] == "Egyptian cat"
    assert labels[504] == "coffee mug" and labels[967] == "espresso" and labels[999] == "toilet tissue"
    assert get_labels("imagenet") is labels
