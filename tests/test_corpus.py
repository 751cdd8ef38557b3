"""The corpus is what its manifest says it is."""

import hashlib

from tests.conftest import CORPUS, MANIFEST


def test_manifest_lists_required_images():
    paths = {e["path"] for e in MANIFEST["images"]}
    assert "images/debian-2022.11/OVMF_CODE.fd" in paths
    assert "images/debian-2022.11/OVMF_CODE_4M.fd" in paths
    assert "images/debian-2025.02/OVMF_CODE_4M.fd" in paths
    assert "images/debian-2025.02/OVMF_VARS_4M.fd" in paths  # boot-check's variable store


def test_images_match_recorded_sha256_and_have_license():
    for e in MANIFEST["images"]:
        data = (CORPUS / e["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e["sha256"], e["path"]
        assert len(data) == e["size"]
        assert (CORPUS / e["license"]).is_file()
        assert e["version"].startswith(e["path"].split("/")[1].removeprefix("debian-"))
