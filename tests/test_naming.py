"""The model's and endpoint's display names when a run is not given them: named after the data."""

from __future__ import annotations

import pytest

from components.lib.targets.naming import data_name, display_names


@pytest.mark.parametrize(
    ("data_uri", "name"),
    [
        ("/home/me/mugs", "mugs"),
        ("/home/me/mugs/", "mugs"),
        ("gs://acme/photos/mugs", "mugs"),
        # generic folders say nothing: the name comes from above them, up to the bucket
        ("gs://acme/mugs/train", "mugs"),
        ("gs://acme-mugs/data", "acme-mugs"),
        ("/gcs/acme-mugs/images/", "acme-mugs"),
        # a label CSV: its name, or its folder's when the file is called labels
        ("gs://acme/imports/mugs.csv", "mugs"),
        ("gs://acme/mugs/labels.csv", "mugs"),
        ("gs://b/Mugs and Cups (2026)", "mugs-and-cups-2026"),
        ("gs://acme/mugs?X-Goog-Signature=SECRET", "mugs"),
        ("/data", "image"),
        # the challenge's bucket, cut at a dash to leave room for -classifier-endpoint
        (
            "gs://ml6_junior_ml_engineer_challenge_cv_beer_data/data",
            "ml6-junior-ml-engineer-challenge-cv-beer",
        ),
    ],
)
def test_the_data_is_named_by_its_folder_or_bucket(data_uri: str, name: str) -> None:
    assert data_name(data_uri) == name


def test_names_given_win_and_a_given_model_name_names_the_endpoint() -> None:
    assert display_names("/x/mugs") == ("mugs-classifier", "mugs-classifier-endpoint")
    assert display_names("/x/mugs", "cups") == ("cups", "cups-endpoint")
    assert display_names("/x/mugs", "", "shop") == ("mugs-classifier", "shop")
    model, endpoint = display_names("gs://" + "a" * 200 + "/data")
    assert len(endpoint) <= 63 and model == "a" * 43 + "-classifier"
