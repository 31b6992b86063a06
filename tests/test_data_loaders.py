import csv
import json
import logging
import os
import tempfile

import pytest
from datasets import Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from modeling_bcqlm.data.loaders import (
    VQA_FEATURES,
    load_caption_file,
    load_gqa,
    load_vizwiz,
    load_vqa_dataset,
    load_vqa_file,
    load_vqav2,
    normalize_vqa_columns,
)


def write_image(path, color=(255, 0, 0)):
    Image.new("RGB", (8, 6), color).save(path)
    return str(path)


def write_corrupt_image(path):
    path.write_bytes(b"not an image at all")
    return str(path)


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def vqav2_answers(*answers):
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


@pytest.fixture
def vqav2(tmp_path):
    """Three questions on images 1 and 2 (present), one on image 3 (missing) and one on image 4 (corrupt)."""
    images = tmp_path / "val2014"
    images.mkdir()
    write_image(images / "COCO_val2014_000000000001.jpg")
    write_image(images / "COCO_val2014_000000000002.jpg", (0, 255, 0))
    write_corrupt_image(images / "COCO_val2014_000000000004.jpg")
    questions = [
        {"image_id": 1, "question": "Is it red?", "question_id": 10},
        {"image_id": 1, "question": "How many cats?", "question_id": 11},
        {"image_id": 2, "question": "What color?", "question_id": 20},
        {"image_id": 3, "question": "Missing?", "question_id": 30},
        {"image_id": 4, "question": "Corrupt?", "question_id": 40},
    ]
    annotations = [
        {
            "question_id": q["question_id"],
            "image_id": q["image_id"],
            "answers": vqav2_answers(*answers),
            "multiple_choice_answer": answers[0],
            "answer_type": answer_type,
            "question_type": "what",
        }
        for q, answers, answer_type in zip(
            questions,
            [["yes"] * 9 + ["no"], ["2"] * 6 + ["3"] * 4, ["green"] * 10, ["x"] * 10, ["y"] * 10],
            ["yes/no", "number", "other", "other", "other"],
        )
    ]
    questions_file = write_json(
        tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {"data_subtype": "val2014", "questions": questions}
    )
    annotations_file = write_json(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": annotations})
    return questions_file, annotations_file, str(images)


def test_load_vqav2_raises_on_missing_and_corrupt_images(vqav2):
    questions_file, annotations_file, images = vqav2
    with pytest.raises(ValueError, match=r"2 image\(s\) used by 2 of 5 rows") as error:
        load_vqav2(questions_file, annotations_file, image_root=images)
    assert "COCO_val2014_000000000003.jpg" in str(error.value)
    assert "COCO_val2014_000000000004.jpg" in str(error.value)
    assert "on_missing_image='skip'" in str(error.value)


def test_load_vqav2_skips_missing_and_corrupt_images(vqav2, caplog):
    questions_file, annotations_file, images = vqav2
    with caplog.at_level(logging.WARNING):
        dataset = load_vqav2(questions_file, annotations_file, image_root=images, on_missing_image="skip")
    assert "2 image(s) used by 2 of 5 rows" in caplog.text

    assert dataset.features == VQA_FEATURES
    assert dataset["question_id"] == ["10", "11", "20"]
    assert dataset["question"] == ["Is it red?", "How many cats?", "What color?"]
    assert dataset["answer"] == ["yes", "2", "green"]
    assert dataset["question_type"] == ["yes/no", "number", "other"]
    assert dataset[0]["answers"] == ["yes"] * 9 + ["no"]
    assert all(len(answers) == 10 for answers in dataset["answers"])

    paths = [image["path"] for image in dataset.cast_column("image", ImageFeature(decode=False))["image"]]
    assert paths[0] == os.path.join(os.path.abspath(images), "COCO_val2014_000000000001.jpg")
    assert all(os.path.isabs(path) for path in paths)
    image = dataset[2]["image"]
    assert isinstance(image, Image.Image)
    assert image.size == (8, 6) and image.convert("RGB").getpixel((0, 0))[1] > 200


def test_load_vqav2_without_annotations_is_a_test_split(vqav2, tmp_path):
    questions_file, _, images = vqav2
    data = json.loads(open(questions_file).read())
    data["data_subtype"] = "test-dev2015"
    data["questions"] = data["questions"][:3]
    test_images = tmp_path / "test2015"
    test_images.mkdir()
    for image_id in (1, 2):
        write_image(test_images / f"COCO_test2015_{image_id:012d}.jpg")
    dataset = load_vqav2(write_json(tmp_path / "test-dev.json", data), image_root=str(test_images))
    assert dataset["answers"] == [[], [], []]
    assert dataset["answer"] == ["", "", ""]
    assert dataset["question_type"] == ["", "", ""]


def test_load_vqav2_data_subtype_argument(vqav2, tmp_path):
    questions_file, annotations_file, images = vqav2
    data = json.loads(open(questions_file).read())
    del data["data_subtype"]
    data["questions"] = data["questions"][:3]
    questions_file = write_json(tmp_path / "questions.json", data)
    with pytest.raises(ValueError, match="data_subtype"):
        load_vqav2(questions_file, annotations_file, image_root=images)
    dataset = load_vqav2(questions_file, annotations_file, image_root=images, data_subtype="val2014")
    assert len(dataset) == 3


def test_load_vqav2_errors(vqav2, tmp_path):
    questions_file, annotations_file, images = vqav2
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_vqav2(str(tmp_path / "nope.json"), image_root=images)
    gqa_file = write_json(tmp_path / "gqa.json", {"1": {"imageId": "n1", "question": "q?", "answer": "a"}})
    with pytest.raises(ValueError, match="not a VQAv2 questions file.*gqa file.*load_gqa"):
        load_vqav2(gqa_file, image_root=images)
    with pytest.raises(ValueError, match="not a VQAv2 annotations file"):
        load_vqav2(questions_file, questions_file, image_root=images)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_vqav2(str(bad), image_root=images)

    annotations = json.loads(open(annotations_file).read())
    annotations["annotations"] = annotations["annotations"][1:]
    with pytest.raises(ValueError, match=r"1 of the 5 questions .* no annotation .*\[10\]"):
        load_vqav2(questions_file, write_json(tmp_path / "a.json", annotations), image_root=images)
    annotations = json.loads(open(annotations_file).read())
    annotations["annotations"][0]["image_id"] = 99
    with pytest.raises(ValueError, match="another image id"):
        load_vqav2(questions_file, write_json(tmp_path / "b.json", annotations), image_root=images)
    with pytest.raises(ValueError, match="on_missing_image"):
        load_vqav2(questions_file, annotations_file, image_root=images, on_missing_image="ignore")


@pytest.fixture
def gqa(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "n1.jpg")
    write_corrupt_image(images / "n3.jpg")
    questions = {
        "201": {
            "imageId": "n1",
            "question": "Is the sky blue?",
            "answer": "yes",
            "fullAnswer": "Yes, the sky is blue.",
            "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
        },
        "202": {"imageId": "n1", "question": "What is it?", "answer": "dog", "types": {"semantic": "obj"}},
        "203": {"imageId": "n2", "question": "Missing?", "answer": "no", "types": {}},
        "204": {"imageId": "n3", "question": "Corrupt?", "answer": "no", "types": {}},
    }
    return write_json(tmp_path / "testdev_balanced_questions.json", questions), str(images)


def test_load_gqa(gqa, caplog):
    questions_file, images = gqa
    with pytest.raises(ValueError, match=r"2 image\(s\) used by 2 of 4 rows"):
        load_gqa(questions_file, images)
    with caplog.at_level(logging.WARNING):
        dataset = load_gqa(questions_file, images, on_missing_image="skip")
    assert "2 image(s) used by 2 of 4 rows" in caplog.text
    assert dataset.to_dict() | {"image": None} == {
        "image": None,
        "question": ["Is the sky blue?", "What is it?"],
        "answers": [["yes"], ["dog"]],
        "answer": ["yes", "dog"],
        "question_id": ["201", "202"],
        "question_type": ["verify", "obj"],
    }
    assert isinstance(dataset[0]["image"], Image.Image)
    assert dataset.cast_column("image", ImageFeature(decode=False))[0]["image"]["path"] == os.path.join(
        os.path.abspath(images), "n1.jpg"
    )


def test_load_gqa_errors(gqa, vqav2, tmp_path):
    _, images = gqa
    with pytest.raises(ValueError, match="not a GQA questions file.*vqav2 questions file.*load_vqav2"):
        load_gqa(vqav2[0], images)
    with pytest.raises(ValueError, match="has no imageId"):
        load_gqa(write_json(tmp_path / "q.json", {"1": {"question": "q?"}}), images)
    with pytest.raises(FileNotFoundError):
        load_gqa(str(tmp_path / "missing.json"), images)


@pytest.fixture
def vizwiz(tmp_path):
    images = tmp_path / "val"
    images.mkdir()
    write_image(images / "VizWiz_val_00000000.jpg")
    write_image(images / "VizWiz_val_00000001.png")
    records = [
        {
            "image": "VizWiz_val_00000000.jpg",
            "question": "What is this?",
            "answers": [{"answer": a, "answer_confidence": "yes"} for a in ["soda"] * 3 + ["coke"] * 7],
            "answer_type": "other",
            "answerable": 1,
        },
        {
            "image": "VizWiz_val_00000001.png",
            "question": "What color?",
            "answers": [{"answer": a, "answer_confidence": "maybe"} for a in ["blue", "red"] * 5],
            "answer_type": "other",
            "answerable": 1,
        },
        {
            "image": "VizWiz_val_00000002.jpg",
            "question": "Missing?",
            "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10,
            "answer_type": "unanswerable",
            "answerable": 0,
        },
    ]
    return write_json(tmp_path / "val.json", records), str(images)


def test_load_vizwiz(vizwiz, caplog):
    annotations_file, images = vizwiz
    with pytest.raises(ValueError, match=r"1 image\(s\) used by 1 of 3 rows.*VizWiz_val_00000002.jpg"):
        load_vizwiz(annotations_file, images)
    with caplog.at_level(logging.WARNING):
        dataset = load_vizwiz(annotations_file, images, on_missing_image="skip")
    assert "1 image(s) used by 1 of 3 rows" in caplog.text
    assert dataset["question_id"] == ["VizWiz_val_00000000.jpg", "VizWiz_val_00000001.png"]
    assert dataset["answer"] == ["coke", "blue"]  # most common; the first on ties
    assert [len(answers) for answers in dataset["answers"]] == [10, 10]
    assert dataset["question_type"] == ["other", "other"]
    assert isinstance(dataset[1]["image"], Image.Image)


def test_load_vizwiz_errors(vizwiz, gqa, tmp_path):
    _, images = vizwiz
    with pytest.raises(ValueError, match="not a VizWiz annotations file.*gqa"):
        load_vizwiz(gqa[0], images)
    with pytest.raises(ValueError, match="has no question"):
        load_vizwiz(write_json(tmp_path / "v.json", [{"image": "a.jpg"}]), images)


@pytest.fixture
def plain_images(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    write_image(images / "a.png")
    write_image(images / "b.jpg")
    write_corrupt_image(images / "corrupt.png")
    return images


def test_load_vqa_file_jsonl(plain_images, tmp_path, caplog):
    records = [
        {"image": "imgs/a.png", "question": "Q1?", "answer": "yes", "question_type": "yes/no"},
        {"image": str(plain_images / "b.jpg"), "question": "Q2?", "answers": ["2", "3", "3"], "question_id": 7},
        {"image": "imgs/missing.png", "question": "Q3?", "answer": "no"},
        {"image": "imgs/corrupt.png", "question": "Q4?", "answer": "no"},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n\n")
    with pytest.raises(ValueError, match=r"2 image\(s\) used by 2 of 4 rows"):
        load_vqa_file(str(path))
    with caplog.at_level(logging.WARNING):
        dataset = load_vqa_file(str(path), on_missing_image="skip")
    assert "2 image(s) used by 2 of 4 rows" in caplog.text
    assert dataset.features == VQA_FEATURES
    assert dataset["answers"] == [["yes"], ["2", "3", "3"]]
    assert dataset["answer"] == ["yes", "3"]
    assert dataset["question_id"] == ["0", "7"]
    assert dataset["question_type"] == ["yes/no", ""]
    paths = [image["path"] for image in dataset.cast_column("image", ImageFeature(decode=False))["image"]]
    assert paths == [str(plain_images / "a.png"), str(plain_images / "b.jpg")]
    assert all(isinstance(image, Image.Image) for image in dataset["image"])


def test_load_vqa_file_csv_with_image_root(plain_images, tmp_path):
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "question", "answers", "answer"])
        writer.writeheader()
        writer.writerow({"file_name": "a.png", "question": "Q1?", "answers": '["yes", "no", "yes"]', "answer": ""})
        writer.writerow({"file_name": "b.jpg", "question": "Q2, with a comma?", "answers": "", "answer": "cat"})
    dataset = load_vqa_file(str(path), image_root=str(plain_images), image_column="file_name")
    assert dataset["question"] == ["Q1?", "Q2, with a comma?"]
    assert dataset["answers"] == [["yes", "no", "yes"], ["cat"]]
    assert dataset["answer"] == ["yes", "cat"]
    assert dataset["question_id"] == ["0", "1"]

    path.write_text("image,question,answers\nimgs/a.png,Q?,yes|no\n")
    with pytest.raises(ValueError, match="JSON lists"):
        load_vqa_file(str(path))


def test_load_vqa_file_errors(plain_images, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_vqa_file(str(tmp_path / "nope.jsonl"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match=".jsonl, .csv or .json"):
        load_vqa_file(str(tmp_path / "data.txt"))
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"image": "imgs/a.png", "question": "Q?"}) + "\n")
    with pytest.raises(ValueError, match="Row 0 .* has no answer or answers"):
        load_vqa_file(str(path))
    path.write_text(json.dumps({"image": "imgs/a.png", "question": "Q?", "answer": "a"}) + "\n{oops\n")
    with pytest.raises(ValueError, match="Line 2 .* not valid JSON"):
        load_vqa_file(str(path))
    path.write_text(json.dumps({"image": "imgs/a.png", "question": "Q?", "answer": "a"}) + "\n\n[1, 2]\n")
    with pytest.raises(ValueError, match="Line 3 of .*data.jsonl is not a JSON object: fix or remove that line"):
        load_vqa_file(str(path))
    mixed = [{"image": "imgs/a.png", "question": "Q?", "answer": answer} for answer in (2, "yes")]
    path.write_text("".join(json.dumps(record) + "\n" for record in mixed))
    with pytest.raises(ValueError, match=r"Cannot read .*data.jsonl: .*\. Give each key one type in every line"):
        load_vqa_file(str(path))
    path.write_text(json.dumps({"image": None, "question": "Q?", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"Row 0 of .* has no image: found keys \['answer', 'question'\]"):
        load_vqa_file(str(path))
    path.write_text("\n")
    with pytest.raises(ValueError, match="data.jsonl holds no VQA records"):
        load_vqa_file(str(path))
    (tmp_path / "data.csv").write_text("image,question,answer\n")
    with pytest.raises(ValueError, match="data.csv holds no VQA records"):
        load_vqa_file(str(tmp_path / "data.csv"))
    for data, found in [({"1": {"imageId": "n1", "question": "q?"}}, "a gqa file"), ([1, 2], "a JSON list")]:
        with pytest.raises(ValueError, match=f"data.json is not a list of VQA records: found {found}"):
            load_vqa_file(write_json(tmp_path / "data.json", data))


def test_load_vqa_file_keeps_the_values_as_written(plain_images, tmp_path, monkeypatch):
    # CSV cells stay the strings they hold (no "007" -> 7, no "None" -> missing); a null answer is an unanswered row.
    path = tmp_path / "data.csv"
    path.write_text('image,question,answer,question_id\nimgs/a.png,None,1.50,007\nimgs/b.jpg,NA,,\n')
    dataset = load_vqa_file(str(path))
    assert dataset["question"] == ["None", "NA"] and dataset["answer"] == ["1.50", ""]
    assert dataset["question_id"] == ["007", "1"] and dataset["answers"] == [["1.50"], []]
    records = [{"image": "imgs/a.png", "question": "Q?", "answer": None}, {"image": "imgs/gone.png", "question": "Q?"}]
    path = tmp_path / "data[1].jsonl"  # not a glob pattern
    path.write_text("\n".join(json.dumps(record) for record in records))
    # Read into memory through a throwaway cache, removed on return.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    dataset = load_vqa_file(str(path), on_missing_image="skip")
    assert dataset["answers"] == [[]] and dataset["answer"] == [""] and dataset.cache_files == []
    assert os.listdir(scratch) == []
    # Every image missing: an empty dataset, with the schema.
    dataset = load_vqa_file(str(path), image_root=str(tmp_path / "nowhere"), on_missing_image="skip")
    assert len(dataset) == 0 and dataset.features == VQA_FEATURES


def test_normalize_vqa_columns(plain_images):
    dataset = Dataset.from_dict(
        {
            "image": ["a.png", "missing.png", "b.jpg"],
            "question": ["Q1?", "Q2?", "Q3?"],
            "answers": [
                [
                    {"answer": "no", "answer_id": 1},
                    {"answer": "yes", "answer_id": 2},
                    {"answer": "yes", "answer_id": 3},
                ],
                [{"answer": "x", "answer_id": 1}],
                [{"answer": "4", "answer_id": 1}],
            ],
            "multiple_choice_answer": ["no", "x", "4"],
            "answer_type": ["yes/no", "other", "number"],
            "question_type": ["is the", "what", "how many"],
            "extra": [1, 2, 3],
        }
    )
    with pytest.raises(ValueError, match=r"1 image\(s\) used by 1 of 3 rows"):
        normalize_vqa_columns(dataset, str(plain_images))
    normalized = normalize_vqa_columns(dataset, str(plain_images), on_missing_image="skip")
    assert normalized.features == VQA_FEATURES
    assert normalized["answers"] == [["no", "yes", "yes"], ["4"]]
    assert normalized["answer"] == ["no", "4"]
    assert normalized["question_id"] == ["0", "2"]
    assert normalized["question_type"] == ["yes/no", "number"]
    assert isinstance(normalized[1]["image"], Image.Image)

    # Images stored in the dataset are kept, not checked.
    stored = Dataset.from_dict(
        {"image": [str(plain_images / "a.png")], "question": ["Q?"], "answer": ["yes"]},
        features=Features({"image": ImageFeature(), "question": Value("string"), "answer": Value("string")}),
    )
    normalized = normalize_vqa_columns(stored)
    assert normalized[0]["answers"] == ["yes"] and isinstance(normalized[0]["image"], Image.Image)
    answers_only = Dataset.from_dict({"image": ["a.png"], "question": ["Q?"], "answers": [["no", "yes", "yes"]]})
    assert normalize_vqa_columns(answers_only, str(plain_images))["answer"] == ["yes"]

    with pytest.raises(ValueError, match="no question, answer or answers column.*'img'"):
        normalize_vqa_columns(Dataset.from_dict({"image": ["a.png"], "img": ["b"]}))


def test_load_vqa_dataset_dispatches_local_layouts(vqav2, gqa, vizwiz, plain_images, tmp_path):
    questions_file, annotations_file, images = vqav2
    dataset = load_vqa_dataset(
        questions_file, image_root=images, annotations_file=annotations_file, on_missing_image="skip"
    )
    assert dataset["question_id"] == ["10", "11", "20"]
    assert load_vqa_dataset(gqa[0], image_root=gqa[1], on_missing_image="skip")["question_id"] == ["201", "202"]
    assert len(load_vqa_dataset(vizwiz[0], image_root=vizwiz[1], on_missing_image="skip")) == 2
    with pytest.raises(ValueError, match="pass `image_root`"):
        load_vqa_dataset(gqa[0])
    with pytest.raises(ValueError, match="annotations file: pass the questions file"):
        load_vqa_dataset(annotations_file, image_root=images)

    records = [{"image": "imgs/a.png", "question": "Q?", "answer": "yes"}]
    assert load_vqa_dataset(write_json(tmp_path / "plain.json", records))["answer"] == ["yes"]
    with pytest.raises(FileNotFoundError, match="No such VQA file or folder"):
        load_vqa_dataset(str(tmp_path / "missing.jsonl"))


def test_load_vqa_dataset_folders(plain_images, tmp_path):
    (plain_images / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "question": "Q?", "answer": "yes"})
        + "\n"
        + json.dumps({"file_name": "gone.png", "question": "Q2?", "answer": "no"})
        + "\n"
    )
    dataset = load_vqa_dataset(str(plain_images), on_missing_image="skip")
    assert dataset["question"] == ["Q?"]
    assert isinstance(dataset[0]["image"], Image.Image)

    saved = DatasetDict(
        {"validation": Dataset.from_dict({"image": ["a.png"], "question": ["Q?"], "answers": [["yes", "no", "no"]]})}
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    dataset = load_vqa_dataset(str(tmp_path / "saved"), split="validation", image_root=str(plain_images))
    assert dataset["answer"] == ["no"] and isinstance(dataset[0]["image"], Image.Image)
    with pytest.raises(ValueError, match="no split 'train'"):
        load_vqa_dataset(str(tmp_path / "saved"), image_root=str(plain_images))

    parquet = tmp_path / "parquet"
    parquet.mkdir()
    Dataset.from_dict({"image": [str(plain_images / "b.jpg")], "question": ["Q?"], "answer": ["cat"]}).to_parquet(
        str(parquet / "train.parquet")
    )
    dataset = load_vqa_dataset(str(parquet), cache_dir=str(tmp_path / "cache"))
    assert dataset["answers"] == [["cat"]]


def test_load_caption_file(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    red = write_image(images / "red.png")
    write_corrupt_image(images / "broken.png")
    rows = [
        {"file": "red.png", "text": "a red square"},
        {"file": "missing.png", "text": "nothing"},
        {"file": "broken.png", "text": "broken"},
    ]
    path = tmp_path / "captions.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "text"])
        writer.writeheader()
        writer.writerows(rows)

    with pytest.raises(ValueError, match=r"2 image\(s\) used by 2 of 3 rows"):
        load_caption_file(str(path), str(images), image_column="file", caption_column="text")
    with caplog.at_level(logging.WARNING):
        dataset = load_caption_file(
            str(path), str(images), image_column="file", caption_column="text", on_missing_image="skip"
        )
    assert "2 image(s)" in caplog.text
    assert dataset["caption"] == ["a red square"]
    assert dataset.features["image"] == ImageFeature()
    assert dataset.cast_column("image", ImageFeature(decode=False))[0]["image"]["path"] == red
    assert dataset[0]["image"].getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(ValueError, match="Row 0 of .* has no caption"):
        load_caption_file(str(path), str(images), image_column="file")


def test_load_caption_file_keeps_valid_object_boxes(tmp_path):
    write_image(tmp_path / "red.png")
    path = tmp_path / "captions.jsonl"
    rows = [
        {"image": "red.png", "caption": "a red square", "regions": [[0, 1, 4, 5.5], [2, 2, 3, 3]]},
        {"image": "red.png", "caption": "nothing boxed", "regions": []},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = load_caption_file(str(path), box_column="regions")
    assert dataset["boxes"] == [[[0.0, 1.0, 4.0, 5.5], [2.0, 2.0, 3.0, 3.0]], []]
    assert load_caption_file(str(path)).column_names == ["image", "caption"]
    for bad in ([[4, 1, 0, 5]], [[0, 1, 4]], "0 1 4 5"):
        path.write_text(json.dumps({**rows[0], "regions": bad}) + "\n")
        with pytest.raises(ValueError, match=r"Row 0 of .*\[x0, y0, x1, y1\]"):
            load_caption_file(str(path), box_column="regions")
    with pytest.raises(ValueError, match="Row 0 of .* has no boxes"):
        load_caption_file(str(path), box_column="boxes")
