"""Loaders for VQA training and evaluation data: VQAv2, GQA, VizWiz, plain JSONL/CSV/JSON files and Hub datasets.

Every loader returns a `datasets.Dataset` with the columns of `VQA_FEATURES`:

- `image`: a `datasets.Image()` feature holding the absolute path of the image file (decoded to PIL lazily),
- `question` (str),
- `answers` (list of str): all the human answers (10 for VQAv2 and VizWiz), `[answer]` for single-answer data and
  `[]` for test splits,
- `answer` (str): the most common answer (VQAv2's `multiple_choice_answer`), `""` for test splits,
- `question_id` (str),
- `question_type` (str): VQAv2/VizWiz's answer type (`"yes/no"`, `"number"`, `"other"`, `"unanswerable"`), GQA's
  structural type (else its semantic type), for other data an `answer_type` column, else a `question_type` column,
  else `""`.

Image files are checked when the data is loaded, so that a missing or corrupt file does not stop training
mid-epoch: a file that does not exist or that PIL cannot identify and verify makes the loader raise a `ValueError`
naming the count and the first paths (`on_missing_image="raise"`, the default, so that an evaluation never runs on a
silent subset), or drop its rows with a warning (`on_missing_image="skip"`).
"""

import csv
import glob
import itertools
import json
import logging
import os
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import datasets
from datasets import Dataset, Features, Image, Sequence, Value
from datasets.exceptions import DatasetGenerationError
from datasets.packaged_modules.json.json import JsonConfig
from PIL import Image as PILImage


logger = logging.getLogger(__name__)

VQA_FEATURES = Features(
    {
        "image": Image(),
        "question": Value("string"),
        "answers": Sequence(Value("string")),
        "answer": Value("string"),
        "question_id": Value("string"),
        "question_type": Value("string"),
    }
)
ON_MISSING_IMAGE = ("raise", "skip")
# The first missing or unreadable paths named in errors and warnings.
NUM_PATHS_REPORTED = 5
# VQAv2's test-dev questions use the images of the test split.
VQAV2_IMAGE_SPLITS = {"test-dev2015": "test2015"}
# Newer datasets store a key holding values of several types as JSON text, which reads back unparsed (the answers 2 and
# "yes" as "2" and '"yes"'): make it an error, as in datasets 3.
JSON_OPTIONS = {"on_mixed_types": None} if "on_mixed_types" in JsonConfig.__dataclass_fields__ else {}
LAYOUT_LOADERS = {
    "vqav2 questions": "load_vqav2",
    "vqav2 annotations": "load_vqav2(questions_file, annotations_file)",
    "gqa": "load_gqa",
    "vizwiz": "load_vizwiz",
}


def load_vqav2(
    questions_file: str,
    annotations_file: str | None = None,
    *,
    image_root: str,
    data_subtype: str | None = None,
    on_missing_image: str = "raise",
) -> Dataset:
    """
    Loads VQAv2 from its official files (e.g. `v2_OpenEnded_mscoco_val2014_questions.json` and
    `v2_mscoco_val2014_annotations.json`). Images are `{image_root}/COCO_{data_subtype}_{image_id:012d}.jpg`, with
    `data_subtype` (e.g. `"val2014"`) read from the questions file unless given. Without `annotations_file` (test
    splits) `answers` is `[]` and `answer` is `""`.
    """
    _check_on_missing_image(on_missing_image)
    questions_data = _load_json(questions_file)
    if not (isinstance(questions_data, dict) and isinstance(questions_data.get("questions"), list)):
        raise ValueError(
            f"{questions_file} is not a VQAv2 questions file: expected a JSON object with a 'questions' list, "
            f"found {_describe_layout(questions_data)}."
        )
    questions = questions_data["questions"]
    _check_keys(questions, ("image_id", "question", "question_id"), questions_file, "questions")

    data_subtype = data_subtype or questions_data.get("data_subtype")
    if data_subtype is None:
        raise ValueError(
            f"{questions_file} has no 'data_subtype' field: pass `data_subtype` (e.g. 'val2014'), the split part of "
            "the image file names COCO_<data_subtype>_<image_id>.jpg."
        )
    image_split = VQAV2_IMAGE_SPLITS.get(data_subtype, data_subtype)

    annotations = {} if annotations_file is None else _load_vqav2_annotations(annotations_file, questions, questions_file)
    rows = []
    for question in questions:
        annotation = annotations.get(question["question_id"], {})
        rows.append(
            {
                "image": os.path.join(image_root, f"COCO_{image_split}_{question['image_id']:012d}.jpg"),
                "question": question["question"],
                "answers": [answer["answer"] for answer in annotation.get("answers", [])],
                "answer": annotation.get("multiple_choice_answer", ""),
                "question_id": str(question["question_id"]),
                "question_type": annotation.get("answer_type", ""),
            }
        )
    return _build_dataset(rows, on_missing_image)


def _load_vqav2_annotations(annotations_file: str, questions: list[dict], questions_file: str) -> dict[int, dict]:
    """The VQAv2 annotations by question id, checked to cover `questions` with the same image ids."""
    annotations_data = _load_json(annotations_file)
    if not (isinstance(annotations_data, dict) and isinstance(annotations_data.get("annotations"), list)):
        raise ValueError(
            f"{annotations_file} is not a VQAv2 annotations file: expected a JSON object with an 'annotations' "
            f"list, found {_describe_layout(annotations_data)}."
        )
    _check_keys(
        annotations_data["annotations"],
        ("question_id", "image_id", "answers", "multiple_choice_answer"),
        annotations_file,
        "annotations",
    )
    annotations = {annotation["question_id"]: annotation for annotation in annotations_data["annotations"]}
    unmatched = [q["question_id"] for q in questions if q["question_id"] not in annotations]
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} of the {len(questions)} questions in {questions_file} have no annotation in "
            f"{annotations_file} (question ids {unmatched[:NUM_PATHS_REPORTED]}...): pass the annotations file "
            "of the same split."
        )
    mismatched = [
        q["question_id"] for q in questions if q["image_id"] != annotations[q["question_id"]]["image_id"]
    ]
    if mismatched:
        raise ValueError(
            f"{len(mismatched)} questions in {questions_file} have another image id in {annotations_file} "
            f"(question ids {mismatched[:NUM_PATHS_REPORTED]}...): the two files do not belong together."
        )
    return annotations


def load_gqa(questions_file: str, image_root: str, *, on_missing_image: str = "raise") -> Dataset:
    """
    Loads GQA from a questions file (e.g. `testdev_balanced_questions.json`): a JSON object mapping question ids to
    `{"imageId", "question", "answer", "types", ...}`. Images are `{image_root}/{imageId}.jpg`. Questions without an
    answer (the submission splits) get `answers=[]` and `answer=""`.
    """
    _check_on_missing_image(on_missing_image)
    data = _load_json(questions_file)
    if not (isinstance(data, dict) and all(isinstance(value, dict) for value in data.values())):
        raise ValueError(
            f"{questions_file} is not a GQA questions file: expected a JSON object mapping question ids to "
            f"questions, found {_describe_layout(data)}."
        )
    _check_keys(list(data.values()), ("imageId", "question"), questions_file, "questions")

    rows = []
    for question_id, question in data.items():
        types = question.get("types") or {}
        answer = question.get("answer", "")
        rows.append(
            {
                "image": os.path.join(image_root, f"{question['imageId']}.jpg"),
                "question": question["question"],
                "answers": [answer] if answer else [],
                "answer": answer,
                "question_id": str(question_id),
                "question_type": types.get("structural") or types.get("semantic") or "",
            }
        )
    return _build_dataset(rows, on_missing_image)


def load_vizwiz(annotations_file: str, image_root: str, *, on_missing_image: str = "raise") -> Dataset:
    """
    Loads VizWiz-VQA from an annotations file (e.g. `val.json`): a JSON list of `{"image", "question", "answers",
    "answer_type", "answerable"}`. Images are `{image_root}/{image}`. VizWiz has one question per image, so
    `question_id` is the image file name (what the evaluation server expects). `answer` is the most common of the 10
    answers (the first of them on ties).
    """
    _check_on_missing_image(on_missing_image)
    data = _load_json(annotations_file)
    if not (isinstance(data, list) and all(isinstance(record, dict) for record in data)):
        raise ValueError(
            f"{annotations_file} is not a VizWiz annotations file: expected a JSON list of questions, found "
            f"{_describe_layout(data)}."
        )
    _check_keys(data, ("image", "question"), annotations_file, "questions")

    rows = []
    for record in data:
        answers = [answer["answer"] for answer in record.get("answers", [])]
        rows.append(
            {
                "image": os.path.join(image_root, record["image"]),
                "question": record["question"],
                "answers": answers,
                "answer": _most_common(answers),
                "question_id": record["image"],
                "question_type": record.get("answer_type", ""),
            }
        )
    return _build_dataset(rows, on_missing_image)


def load_vqa_file(
    path: str,
    image_root: str | None = None,
    image_column: str = "image",
    *,
    on_missing_image: str = "raise",
) -> Dataset:
    """
    Loads a plain VQA file, by extension: `.jsonl` (one object a line), `.csv` (with a header) or `.json` (a list of
    objects), read with `datasets`' JSON and CSV builders (so a JSON key holds one type in every row; CSV cells stay
    the strings they hold). Each row has an image path (in `image_column`, relative to `image_root`, which defaults
    to the file's folder, or absolute), a `question`, and an `answer` and/or `answers` (null or empty: unanswered, as
    in test splits). In CSV files `answers` is a JSON list string, e.g. `["yes", "yes", "no"]`. Optional columns:
    `question_id` (default: the row's index in the file), `answer_type` or `question_type`.
    """
    _check_on_missing_image(on_missing_image)
    image_root = os.path.dirname(os.path.abspath(path)) if image_root is None else image_root
    return _normalize_vqa_table(_read_table(path, "VQA"), path, image_root, on_missing_image, image_column)


def load_caption_file(
    path: str,
    image_root: str | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    *,
    on_missing_image: str = "raise",
    box_column: str | None = None,
) -> Dataset:
    """
    Loads image-caption pairs for BreezeCLIP's distillation from a `.jsonl`, `.csv` or `.json` file whose rows hold an
    image path (in `image_column`, relative to `image_root`, which defaults to the file's folder, or absolute) and a
    caption. Returns a `datasets.Dataset` with an `image` (`datasets.Image()`) and a `caption` column; missing or
    unreadable images are handled as by the VQA loaders. With `box_column`, each row's object boxes (a list of `[x0,
    y0, x1, y1]` in pixels, possibly empty) are kept as a `boxes` column, for crop distillation around objects.
    """
    _check_on_missing_image(on_missing_image)
    table = _read_table(path, "caption")
    _check_rows(table, path, (image_column, caption_column) + ((box_column,) if box_column else ()))
    image_root = os.path.dirname(os.path.abspath(path)) if image_root is None else image_root
    paths = [_resolve_image_path(image_root, image) for image in table[image_column]]
    keep = _check_images(paths, on_missing_image)
    captions = table[caption_column]
    columns = {"image": [paths[index] for index in keep], "caption": [str(captions[index]) for index in keep]}
    features = {"image": Image(), "caption": Value("string")}
    if box_column:
        boxes = table[box_column]
        columns["boxes"] = [_check_boxes(boxes[index], index, path) for index in keep]
        features["boxes"] = Sequence(Sequence(Value("float32"), length=4))
    return Dataset.from_dict(columns, features=Features(features))


def _check_boxes(boxes, index, path) -> list[list[float]]:
    """A row's object boxes as lists of four floats, or an error naming the row and what a box must be."""
    valid = isinstance(boxes, list) and all(
        isinstance(box, list) and len(box) == 4 and all(isinstance(value, (int, float)) for value in box)
        and box[0] < box[2] and box[1] < box[3]
        for box in boxes
    )
    if not valid:
        raise ValueError(
            f"Row {index} of {path}: the boxes must be a list of [x0, y0, x1, y1] in pixels with x0 < x1 and y0 < y1, "
            f"got {boxes!r}."
        )
    return [[float(value) for value in box] for box in boxes]


def normalize_vqa_columns(
    dataset: Dataset, image_root: str | None = None, *, on_missing_image: str = "raise"
) -> Dataset:
    """
    Maps a `datasets.Dataset` with `image`, `question` and `answer` and/or `answers` columns (answers as strings or as
    VQAv2-style `{"answer": ...}` dicts; without `answer`, a `multiple_choice_answer` column or else the most common
    answer) to `VQA_FEATURES`, dropping the other columns. Image paths (a string `image` column) are resolved against
    `image_root` (default: the working directory) and checked; images stored in the dataset are kept as they are.
    """
    _check_on_missing_image(on_missing_image)
    missing = [column for column in ("image", "question") if column not in dataset.column_names]
    if "answer" not in dataset.column_names and "answers" not in dataset.column_names:
        missing.append("answer or answers")
    if missing:
        raise ValueError(
            f"The dataset has no {', '.join(missing)} column: found {dataset.column_names}. Rename its columns with "
            "`dataset.rename_columns` first."
        )

    input_columns = [column for column in dataset.column_names if column != "image"]
    dataset = dataset.map(
        lambda *values: _normalize_fields(dict(zip(input_columns, values[:-1])), values[-1]),
        input_columns=input_columns,
        with_indices=True,
        remove_columns=input_columns,
        desc="Normalizing VQA columns",
    )
    if isinstance(dataset.features["image"], Image):
        return dataset.select_columns(list(VQA_FEATURES)).cast(VQA_FEATURES)
    paths = [_resolve_image_path(image_root or "", path) for path in dataset["image"]]
    keep = _check_images(paths, on_missing_image)
    # Rebuilt from the (text) columns: `cast` cannot type the columns of an empty selection (every image skipped).
    columns = dataset.select(keep).remove_columns("image").to_dict()
    columns["image"] = [paths[index] for index in keep]
    return Dataset.from_dict({column: columns[column] for column in VQA_FEATURES}, features=VQA_FEATURES)


def load_vqa_dataset(
    name_or_path: str,
    split: str = "train",
    image_root: str | None = None,
    annotations_file: str | None = None,
    *,
    on_missing_image: str = "raise",
    **kwargs,
) -> Dataset:
    """
    Loads VQA data from a local file or folder, by its layout, or else from the Hub:

    - a VQAv2 questions `.json` ([`load_vqav2`], with `annotations_file` and `image_root`), a GQA questions `.json`
      ([`load_gqa`]), a VizWiz annotations `.json` ([`load_vizwiz`]), or a `.jsonl`/`.csv`/`.json` of VQA records
      ([`load_vqa_file`]);
    - a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (`split` picks the split), a folder
      with a `metadata.jsonl` or `metadata.csv` (image paths in `file_name` or `image`, relative to the folder), or
      another folder `datasets.load_dataset` reads (e.g. Parquet files);
    - otherwise a Hub dataset id, loaded with `datasets.load_dataset(name_or_path, split=split, **kwargs)` (this needs
      the network) and passed to [`normalize_vqa_columns`].

    Other `kwargs` go to the local loader (e.g. `data_subtype`, `image_column`).
    """
    _check_on_missing_image(on_missing_image)
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        return _load_vqa_folder(path, split, image_root, on_missing_image, **kwargs)
    if os.path.isfile(path):
        return _load_vqa_local_file(path, image_root, annotations_file, on_missing_image, **kwargs)
    if os.path.isabs(path) or path.startswith(".") or os.path.splitext(path)[1].lower() in (".json", ".jsonl", ".csv"):
        raise FileNotFoundError(f"No such VQA file or folder: {name_or_path}.")
    dataset = datasets.load_dataset(name_or_path, split=split, **kwargs)
    return normalize_vqa_columns(dataset, image_root, on_missing_image=on_missing_image)


def _load_vqa_local_file(path, image_root, annotations_file, on_missing_image, **kwargs):
    if os.path.splitext(path)[1].lower() != ".json":
        return load_vqa_file(path, image_root, on_missing_image=on_missing_image, **kwargs)
    layout = _detect_layout(_load_json(path))
    if layout == "vqav2 annotations":
        raise ValueError(
            f"{path} is a VQAv2 annotations file: pass the questions file, with this one as `annotations_file`."
        )
    if layout in ("vqav2 questions", "gqa", "vizwiz") and image_root is None:
        raise ValueError(f"{path} is a {layout} file: pass `image_root`, the folder of its images.")
    if layout == "vqav2 questions":
        return load_vqav2(path, annotations_file, image_root=image_root, on_missing_image=on_missing_image, **kwargs)
    if layout == "gqa":
        return load_gqa(path, image_root, on_missing_image=on_missing_image)
    if layout == "vizwiz":
        return load_vizwiz(path, image_root, on_missing_image=on_missing_image)
    return load_vqa_file(path, image_root, on_missing_image=on_missing_image, **kwargs)


def _load_vqa_folder(path, split, image_root, on_missing_image, **kwargs):
    image_root = path if image_root is None else image_root
    if os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json")):
        dataset = datasets.load_from_disk(path)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{path} has no split '{split}': it has {list(dataset)}.")
            dataset = dataset[split]
        return normalize_vqa_columns(dataset, image_root, on_missing_image=on_missing_image)
    for name in ("metadata.jsonl", "metadata.csv"):
        metadata = os.path.join(path, name)
        if os.path.isfile(metadata):
            table = _read_table(metadata, "VQA")
            kwargs.setdefault("image_column", "file_name" if "file_name" in table.column_names else "image")
            return _normalize_vqa_table(table, metadata, image_root, on_missing_image, **kwargs)
    dataset = datasets.load_dataset(path, split=split, **kwargs)
    return normalize_vqa_columns(dataset, image_root, on_missing_image=on_missing_image)


def _normalize_vqa_table(table, path, image_root, on_missing_image, image_column="image"):
    """[`normalize_vqa_columns`] on the rows read from `path`, once each row is checked to hold a VQA example."""
    _check_rows(table, path, (image_column, "question"), any_of=("answer", "answers"))
    if path.lower().endswith(".csv") and "answers" in table.column_names:
        # CSV cells are strings: there `answers` holds a JSON list.
        table = table.map(
            lambda text: {"answers": _parse_csv_answers(text, path) if text else []}, input_columns="answers"
        )
    if image_column != "image":
        if "image" in table.column_names:
            table = table.remove_columns("image")
        table = table.rename_column(image_column, "image")
    return normalize_vqa_columns(table, image_root, on_missing_image=on_missing_image)


def _read_table(path, what):
    """
    The rows of a `.jsonl`, `.csv` (with a header) or `.json` (a list of objects) file, read by `datasets`' JSON and
    CSV builders into an in-memory `Dataset`; a key missing from a JSON row reads as None.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such {what} file: {path}.")
    extension = os.path.splitext(path)[1].lower()
    if extension not in (".jsonl", ".csv", ".json"):
        raise ValueError(f"Cannot read {path}: {what} files are .jsonl, .csv or .json, got '{extension}'.")
    if extension == ".json" and not _starts_list_of_objects(path):
        # datasets would read the keys of an object as the columns of one row, and a list of values as a column.
        raise ValueError(_why_unreadable(path, what, extension))
    builder, options = ("csv", _csv_options(path)) if extension == ".csv" else ("json", JSON_OPTIONS)
    # A cache of its own, read into memory: nothing outlives the call or lands under HF_HOME.
    with tempfile.TemporaryDirectory() as cache_dir:
        try:
            return datasets.load_dataset(
                builder,
                data_files=glob.escape(os.path.abspath(path)),  # data_files are glob patterns: "[1]" is not
                split="train",
                cache_dir=cache_dir,
                keep_in_memory=True,
                **options,
            )
        except (DatasetGenerationError, ValueError, StopIteration) as error:
            # datasets' errors name neither the bad line nor the fix; 5.x raises StopIteration on an empty file.
            raise ValueError(_why_unreadable(path, what, extension, error)) from error


def _csv_options(path):
    """`load_dataset("csv")` options that read each cell as the string it holds, as `csv.DictReader` does."""
    with open(path, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    # Else pandas infers types ("007" -> 7), reads "None" or "NA" as missing and shifts rows with extra cells.
    return {
        "features": Features({column: Value("string") for column in header}),
        "keep_default_na": False,
        "index_col": False,
    }


def _starts_list_of_objects(path):
    """Whether the JSON text of `path` opens a list that is empty or starts with an object."""
    head = ""
    with open(path, encoding="utf-8") as f:
        while len(head) < 2 and (chunk := f.read(4096)):
            head += "".join(chunk.split())
    return head[:2] in ("[{", "[]")


def _why_unreadable(path, what, extension, error=None):
    """The message for a file datasets could not read: its first malformed line or record, else datasets' error."""
    if extension == ".json":
        data = _load_json(path)
        if not (isinstance(data, list) and all(isinstance(record, dict) for record in data)):
            return f"{path} is not a list of {what} records: found {_describe_layout(data)}."
        has_rows, hint = bool(data), "Give each key one type in every record (e.g. every answer a string)"
    elif extension == ".jsonl":
        with open(path, encoding="utf-8") as f:
            lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
        for number, line in lines:
            problem = _json_line_problem(line)
            if problem:
                return f"Line {number} of {path} {problem}: fix or remove that line."
        has_rows, hint = bool(lines), "Give each key one type in every line (e.g. every answer a string)"
    else:
        with open(path, encoding="utf-8", newline="") as f:
            has_rows = len(list(itertools.islice(csv.reader(f), 2))) == 2
        hint = "It must be a comma-separated file whose first row names the columns"
    if not has_rows:
        return f"{path} holds no {what} records."
    cause = error.__cause__ or error
    return f"Cannot read {path}: {type(cause).__name__}: {str(cause).rstrip('.')}. {hint}."


def _json_line_problem(line):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        return f"is not valid JSON ({error})"
    return None if isinstance(record, dict) else "is not a JSON object"


def _check_rows(table, path, required, any_of=()):
    """
    Raises naming the first row of `path` with no value in a `required` column, or the file has none of the `any_of`
    columns (their values may be null: a VQA row with a null answer is unanswered, as in test splits).
    """
    columns = table.select_columns([column for column in required if column in table.column_names]).to_dict()
    lacks_any_of = bool(any_of) and not set(any_of) & set(table.column_names)
    for index in range(len(table)):
        missing = [column for column in required if column not in columns or columns[column][index] is None]
        if lacks_any_of:
            missing.append(" or ".join(any_of))
        if missing:
            found = sorted(key for key, value in table[index].items() if value is not None)
            raise ValueError(f"Row {index} of {path} has no {', '.join(missing)}: found keys {found}.")


def _resolve_image_path(image_root, path):
    """The absolute path of an image file, given absolute or relative to `image_root`; `~` is expanded in both."""
    return os.path.abspath(os.path.join(os.path.expanduser(image_root), os.path.expanduser(path)))


def _normalize_fields(record, index):
    """The schema's text columns from one record with `question` and `answer` and/or `answers`."""
    answers = record.get("answers") or []
    if not isinstance(answers, list):
        raise ValueError(f"Row {index}: `answers` must be a list of answers, got {answers!r}.")
    answers = [answer["answer"] if isinstance(answer, dict) else str(answer) for answer in answers]
    answer = record.get("answer") or record.get("multiple_choice_answer")
    answer = _most_common(answers) if answer is None or answer == "" else str(answer)
    question_id = record.get("question_id")
    return {
        "question": str(record["question"]),
        "answers": answers or ([answer] if answer else []),
        "answer": answer,
        "question_id": str(index) if question_id is None or question_id == "" else str(question_id),
        "question_type": str(record.get("answer_type") or record.get("question_type") or ""),
    }


def _build_dataset(rows, on_missing_image):
    """A `VQA_FEATURES` dataset from rows with image paths, without the rows whose image is missing or unreadable."""
    paths = [_resolve_image_path("", row["image"]) for row in rows]
    keep = _check_images(paths, on_missing_image)
    columns = {column: [rows[index][column] for index in keep] for column in VQA_FEATURES if column != "image"}
    columns["image"] = [paths[index] for index in keep]
    return Dataset.from_dict(columns, features=VQA_FEATURES)


def _check_images(paths, on_missing_image):
    """Indices of the paths to keep; raises or warns about missing or unreadable images."""
    unique_paths = list(dict.fromkeys(paths))
    with ThreadPoolExecutor() as executor:
        readable = dict(zip(unique_paths, executor.map(_is_readable_image, unique_paths)))
    bad_paths = [path for path in unique_paths if not readable[path]]
    if not bad_paths:
        return list(range(len(paths)))

    keep = [index for index, path in enumerate(paths) if readable[path]]
    message = (
        f"{len(bad_paths)} image(s) used by {len(paths) - len(keep)} of {len(paths)} rows are missing or unreadable, "
        f"e.g. {bad_paths[:NUM_PATHS_REPORTED]}"
    )
    if on_missing_image == "raise":
        raise ValueError(f"{message}. Fix `image_root` or the files, or pass `on_missing_image='skip'` to drop them.")
    logger.warning(f"{message}. Skipping these rows.")
    return keep


def _is_readable_image(path):
    if not os.path.isfile(path):
        return False
    try:
        with PILImage.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError):
        return False
    return True


def _check_on_missing_image(on_missing_image):
    if on_missing_image not in ON_MISSING_IMAGE:
        raise ValueError(f"`on_missing_image` must be one of {ON_MISSING_IMAGE}, got {on_missing_image!r}.")


def _check_keys(records, keys, path, what):
    for index, record in enumerate(records):
        missing = [key for key in keys if key not in record]
        if missing:
            raise ValueError(f"Entry {index} of the {what} in {path} has no {', '.join(missing)}: {record}.")


def _load_json(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such file: {path}.")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}.") from error


def _parse_csv_answers(text, path):
    try:
        answers = json.loads(text)
    except json.JSONDecodeError:
        answers = None
    if not (isinstance(answers, list) and all(isinstance(answer, str) for answer in answers)):
        raise ValueError(f'The answers column of {path} must hold JSON lists such as ["yes", "no"], got {text!r}.')
    return answers


def _detect_layout(data):
    """The dataset layout of a parsed JSON file: "vqav2 questions", "vqav2 annotations", "gqa", "vizwiz" or None."""
    if isinstance(data, dict):
        if isinstance(data.get("questions"), list):
            return "vqav2 questions"
        if isinstance(data.get("annotations"), list):
            return "vqav2 annotations"
        if data and all(isinstance(value, dict) and "imageId" in value for value in data.values()):
            return "gqa"
    elif isinstance(data, list) and data and isinstance(data[0], dict):
        answers = data[0].get("answers")
        if "answerable" in data[0] or (answers and isinstance(answers[0], dict)):
            return "vizwiz"
    return None


def _describe_layout(data):
    layout = _detect_layout(data)
    if layout is not None:
        return f"a {layout} file (read it with `{LAYOUT_LOADERS[layout]}`)"
    if isinstance(data, dict):
        return f"a JSON object with keys {list(data)[:NUM_PATHS_REPORTED]}"
    return f"a JSON {type(data).__name__}"


def _most_common(answers):
    """The most frequent answer, the first of them on ties; "" when there is none."""
    return Counter(answers).most_common(1)[0][0] if answers else ""
