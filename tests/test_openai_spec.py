"""OpenAI's images answers against OpenAI's own OpenAPI spec (openai/openai-openapi, vendored in tests/openai_spec/,
pinned by hash): real answers of /v1/images/generations and /v1/images/edits (b64_json and url, several sizes,
qualities and formats, multipart through OpenAI's Python client and the JSON edits body), and stream events,
validated with jsonschema against ImagesResponse / ImageGenStreamEvent / ImageEditStreamEvent, $refs resolved.

The rule for what the spec's enums cannot say (protocol.py): `size` left out of ImagesResponse unless it is one
of the spec's three (a stream event, where it is required, says `auto`), the real size in `x-diffserve-size`;
`quality` reported as the level whose steps ran (auto/standard -> medium, hd -> high)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import httpx
import jsonschema_rs
import openai
import pytest
from PIL import Image

from diffserve.api.openai.protocol import reported_quality, reported_size

from . import web
from .servers import png_bytes

SPEC = Path(__file__).parent / "openai_spec" / "images_schemas.json"
SPEC_SHA256 = "1462ae88c8ebd34bfd9757b0af1664905d556835a0d80e931466335783553c5c"
SPEC_COMMIT = "f85dbe223d40e1a31cba812ab2d755c7e98a92a3"


def validator(name: str):
    spec = json.loads(SPEC.read_text())
    return jsonschema_rs.validator_for({"$ref": f"#/components/schemas/{name}", "components": spec["components"]},
                                       validate_formats=True)


def errors(name: str, instance) -> list[str]:
    return [f"{e.instance_path}: {e.message}"[:300] for e in validator(name).iter_errors(instance)]


@pytest.fixture(scope="module")
def key(jobs_server):
    return jobs_server.create_key("--name", "openai-spec")


@pytest.fixture(scope="module")
def http(jobs_server, key):
    with web.client(base_url=jobs_server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def client(jobs_server, key):
    return openai.OpenAI(base_url=f"{jobs_server.url}/v1", api_key=key, max_retries=0)


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def alpha_mask(width=64, height=64) -> bytes:
    """OpenAI's convention: alpha 0 marks the area to edit (the centre square)."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def upload(data: bytes, name="image.png") -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


def image_of(item: dict) -> Image.Image:
    data = base64.b64decode(item["b64_json"]) if "b64_json" in item else web.get(item["url"]).content
    return Image.open(io.BytesIO(data))


def check_answer(response: httpx.Response, size: tuple[int, int], quality: str, fmt: str = "png") -> dict:
    """A 200 whose body validates against ImagesResponse, says what ran, and whose images have the real size."""
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert errors("ImagesResponse", body) == []
    assert response.headers["x-diffserve-size"] == "{}x{}".format(*size)
    assert body.get("size") == reported_size(*size) and body["quality"] == quality and body["output_format"] == fmt
    for item in body["data"]:
        image = image_of(item)
        assert image.size == size and image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    return body


def test_the_vendored_spec_is_the_pinned_file():
    assert hashlib.sha256(SPEC.read_bytes()).hexdigest() == SPEC_SHA256
    source = json.loads(SPEC.read_text())["source"]
    assert source["commit"] == SPEC_COMMIT and source["path"] == "openapi.json"
    # the validator is not vacuous: the answers this test file once saw fail (issue 31) fail it
    assert errors("ImagesResponse", {"created": 1, "data": [], "size": "512x512"})
    assert errors("ImagesResponse", {"created": 1, "data": [], "quality": "auto"})
    assert errors("ImagesResponse", {"data": []})


def test_the_reporting_rule():
    assert reported_size(1024, 1536) == "1024x1536" and reported_size(512, 512) is None
    assert [reported_quality(q) for q in ("low", "medium", "high", "auto", "standard", "hd")] == [
        "low", "medium", "high", "medium", "medium", "high"]


GENERATIONS = [  # (body, size, reported quality, format)
    ({"size": "64x64", "quality": "low"}, (64, 64), "low", "png"),
    ({"size": "96x64", "quality": "medium", "response_format": "url"}, (96, 64), "medium", "png"),
    ({"size": "64x96", "quality": "high", "n": 2}, (64, 96), "high", "png"),
    ({"size": "64x64", "quality": "hd", "response_format": "url"}, (64, 64), "high", "png"),
    ({"size": "64x64", "quality": "standard", "output_format": "jpeg"}, (64, 64), "medium", "jpeg"),
    ({"size": "64x64", "quality": "auto", "output_format": "webp", "response_format": "url"}, (64, 64), "medium",
     "webp"),
    ({"size": "128x64", "output_format": "jpeg", "output_compression": 40, "response_format": "url"}, (128, 64),
     "medium", "jpeg"),
]


@pytest.mark.parametrize("fields,size,quality,fmt", GENERATIONS)
def test_generations_answers_validate(http, fields, size, quality, fmt):
    body = {"prompt": "a lighthouse", "model": "tiny-sd", **fields}
    assert errors("CreateImageRequest", body) == []  # the request itself is one the spec allows
    answer = check_answer(http.post("/v1/images/generations", json=body), size, quality, fmt)
    assert len(answer["data"]) == fields.get("n", 1)


EDITS = [  # (client kwargs, size, reported quality, format)
    ({"response_format": "b64_json", "quality": "low"}, (64, 64), "low", "png"),
    ({"quality": "high", "size": "96x64"}, (96, 64), "high", "png"),
    ({"quality": "hd", "n": 2, "output_format": "webp"}, (64, 64), "high", "webp"),
    ({"quality": "standard", "size": "auto", "output_format": "jpeg", "response_format": "b64_json"}, (64, 64),
     "medium", "jpeg"),
]


@pytest.mark.parametrize("kwargs,size,quality,fmt", EDITS)
def test_multipart_edits_through_openais_client_validate(client, kwargs, size, quality, fmt):
    raw = client.images.with_raw_response.edit(image=upload(png_bytes()), prompt="a watercolor", model="tiny-sd",
                                               **kwargs)
    check_answer(raw.http_response, size, quality, fmt)


def test_multipart_edit_with_a_mask_validates(client):
    raw = client.images.with_raw_response.edit(image=upload(png_bytes()), mask=upload(alpha_mask(), "mask.png"),
                                               prompt="blue", model="tiny-sd", quality="low")
    check_answer(raw.http_response, (64, 64), "low")


def test_json_edits_body_with_image_urls(http, image_host):
    source = png_bytes(64, 64, (200, 30, 30))
    hosted = image_host.add("/openai-spec-source.png", source)
    hosted_mask = image_host.add("/openai-spec-mask.png", alpha_mask())
    cases = [
        ({"images": [{"image_url": data_url(source)}], "quality": "low"}, (64, 64), "low"),
        ({"images": [{"image_url": hosted}], "size": "96x64", "quality": "high"}, (96, 64), "high"),
        ({"images": [{"image_url": hosted}], "mask": {"image_url": data_url(alpha_mask())}, "quality": "low"},
         (64, 64), "low"),
        ({"images": [{"image_url": data_url(source)}], "mask": {"image_url": hosted_mask}, "quality": "low",
          "output_format": "jpeg", "output_compression": 100}, (64, 64), "low"),
    ]
    for fields, size, quality in cases:
        body = {"prompt": "blue", "model": "tiny-sd", **fields}
        # the body is the spec's, but for size: diffserve takes any WxH within the model's limits
        assert errors("EditImageBodyJsonParam", {k: v for k, v in body.items() if k != "size"}) == []
        answer = check_answer(http.post("/v1/images/edits", json=body), size, quality,
                              fields.get("output_format", "png"))
        if "mask" in fields and fields.get("output_format") is None:  # only the transparent square repainted
            out = image_of(answer["data"][0]).convert("RGB")
            kept = Image.open(io.BytesIO(source)).convert("RGB")
            assert out.crop((0, 0, 64, 16)).tobytes() == kept.crop((0, 0, 64, 16)).tobytes()
            assert out.crop((16, 16, 48, 48)).tobytes() != kept.crop((16, 16, 48, 48)).tobytes()
    several = {"prompt": "both", "model": "tiny-flux-kontext", "quality": "low",
               "images": [{"image_url": data_url(source)}, {"image_url": hosted}]}
    check_answer(http.post("/v1/images/edits", json=several), (64, 64), "low")


@pytest.mark.parametrize("fields,param", [
    ({"images": [{"file_id": "file-abc123"}]}, "images[0].file_id"),
    ({"images": [{"image_url": data_url(png_bytes())}], "mask": {"file_id": "file-mask"}}, "mask.file_id"),
    ({}, "images"),
    ({"images": []}, "images"),
    ({"images": [{"image_url": "ftp://example.com/a.png"}]}, "images[0].image_url"),
    ({"images": [{"image_url": "http://127.0.0.1:1/none.png"}]}, "images[0].image_url"),
    ({"images": ["data:image/png;base64,AAAA"]}, "images[0]"),
    ({"images": [{"image_url": "data:image/png;base64,AAAA"}]}, "images[0].image_url"),
    ({"images": [{"image_url": data_url(png_bytes())}], "mask": {"image_url": "http://127.0.0.1:1/m.png"}},
     "mask.image_url"),
    ({"images": [{"image_url": data_url(png_bytes())}], "mask": {"image_url": data_url(png_bytes())}}, "mask"),
    ({"images": [{"image_url": data_url(png_bytes())}], "n": "2"}, "n"),
])
def test_json_edits_refusals_name_the_param(http, fields, param):
    response = http.post("/v1/images/edits", json={"prompt": "x", "model": "tiny-sd", **fields})
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    if param.endswith("file_id"):
        assert "no Files API" in error["message"]


def test_output_compression_as_the_spec_defines_it(http):
    """0-100, 100 (the default) the least compression: omitted and 100 give the same bytes, 0 far fewer."""
    sizes = {}
    for fmt in ("jpeg", "webp"):
        for compression in (None, 100, 0):
            body = {"prompt": "noise", "model": "tiny-sd", "size": "128x128", "quality": "low",
                    "output_format": fmt, **({} if compression is None else {"output_compression": compression})}
            response = http.post("/v1/images/generations", json=body)
            assert response.status_code == 200, response.text[:300]
            image = base64.b64decode(response.json()["data"][0]["b64_json"])
            sizes[fmt, compression] = len(image)
        assert sizes[fmt, None] > 2 * sizes[fmt, 0] and sizes[fmt, 100] > 2 * sizes[fmt, 0], sizes
    refused = http.post("/v1/images/generations", json={"prompt": "x", "output_compression": 101})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "output_compression"


def sse_events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


@pytest.mark.parametrize("path,schema,body", [
    ("/v1/images/generations", "ImageGenStreamEvent", {"size": "64x64"}),
    ("/v1/images/edits", "ImageEditStreamEvent", {"images": [{"image_url": data_url(png_bytes(128, 128))}]}),
])
def test_stream_events_validate(http, path, schema, body):
    request = {"prompt": "slowly", "model": "tiny-sd", "stream": True, "partial_images": 2, "quality": "high",
               **body}
    response = http.post(path, json=request)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events and events[-1]["type"].endswith(".completed")
    for event in events:
        assert errors(schema, event) == [], event["type"]
        assert event["size"] == "auto" and event["quality"] == "high"  # not one of the spec's sizes
    assert response.headers["x-diffserve-size"] == ("64x64" if "size" in body else "128x128")


def test_json_edits_through_openais_client(client, image_host):
    """OpenAI's client sends the JSON edits body through its generic post (its images.edit is multipart only);
    the answer parses as its ImagesResponse."""
    from openai.types import ImagesResponse

    hosted = image_host.add("/openai-spec-client.png", png_bytes(64, 64, (20, 90, 200)))
    out = client.post("/images/edits", cast_to=ImagesResponse, body={
        "prompt": "a watercolor", "model": "tiny-sd", "quality": "hd", "images": [{"image_url": hosted}]})
    assert out.quality == "high" and out.size is None and out.output_format == "png"
    assert image_of({"b64_json": out.data[0].b64_json}).size == (64, 64)


def test_openapi_documents_both_edits_bodies(http):
    """/openapi.json gives /v1/images/edits both of the spec's bodies: multipart (CreateImageEditRequest) and
    JSON (EditImageBodyJsonParam), the JSON one with the spec's required fields and only the spec's fields
    (plus response_format, which diffserve also reads there)."""
    spec = json.loads(SPEC.read_text())["components"]["schemas"]["EditImageBodyJsonParam"]
    content = http.get("/openapi.json").json()["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    ours = content["application/json"]["schema"]
    assert set(ours["required"]) == set(spec["required"]) == {"images", "prompt"}
    assert set(ours["properties"]) - {"response_format"} <= set(spec["properties"])
    assert ours["properties"]["images"]["items"]["properties"].keys() == {"image_url", "file_id"}
    assert {"image", "prompt"} <= set(content["multipart/form-data"]["schema"]["required"])
