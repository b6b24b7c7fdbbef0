"""test_s3.py - the S3 gateway of ellipticsd --http driven by real, unmodified S3
clients from Debian: awscli (aws s3 cp/ls/rm/sync, aws s3api), s3cmd, rclone and a
boto3 script (multipart upload, ranged GETs, copy, listing pages, presigned URL);
contents verified by checksum; a wrong secret key gets 403 from each. Also: a ring of
3 nodes with --copies 2, where what one node's gateway writes another's reads and
lists, across restarts; aws-chunked (streaming SigV4) bodies; anonymous mode from
loopback only."""
import hashlib
import hmac
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import free_port, port_accepts, sanitized, wait_for

AK, SK = "ELLTESTACCESS", "elliptics-test-secret-0123456789"
DEADLINE = 90 if sanitized() else 45
CLI_T = 120 if sanitized() else 60
FAST = ("--heartbeat-ms", "200", "--fail-after-ms", "1500")

AWS, S3CMD, RCLONE = "/usr/bin/aws", "/usr/bin/s3cmd", "/usr/bin/rclone"


def require(path):
    assert os.path.exists(path), "%s is missing: run scripts/deps.sh" % path


def gw_node(node_factory, monkeypatch, *extra, keys=True, http_host="127.0.0.1", name=None):
    """A node with --http; S3 keys from the environment unless keys=False.
    Returns (node, "HOST:PORT" to reach the gateway)."""
    if keys:
        monkeypatch.setenv("ELLIPTICS_S3_ACCESS_KEY", AK)
        monkeypatch.setenv("ELLIPTICS_S3_SECRET_KEY", SK)
    else:
        monkeypatch.delenv("ELLIPTICS_S3_ACCESS_KEY", raising=False)
        monkeypatch.delenv("ELLIPTICS_S3_SECRET_KEY", raising=False)
    for _ in range(5):
        port = free_port()
        try:
            n = node_factory("--http", "%s:%d" % (http_host, port), *extra, name=name)
        except AssertionError as e:
            if "in use" in str(e).lower():
                continue
            raise
        wait_for(lambda: port_accepts(port), DEADLINE, what="the HTTP port to open")
        return n, "127.0.0.1:%d" % port
    raise AssertionError("no free HTTP port")


def client_env(tmp_path, secret=SK):
    """A clean environment for the S3 tools: our keys, no proxies or CA bundles of
    the host, a home of their own."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "AWS_ACCESS_KEY_ID": AK, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(home / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-creds"),
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_PAGER": ""}


def run(args, env, ok=True, timeout=CLI_T):
    p = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=timeout)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    if ok:
        assert p.returncode == 0, "%s failed (%d):\n%s\n%s" % (" ".join(args), p.returncode,
                                                              out[-2000:], err[-2000:])
    return p.returncode, out, err


def md5_file(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def write_random(path, size, seed):
    import random
    r = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(r.randbytes(n))
            left -= n


@pytest.mark.cost(15)
def test_awscli(node_factory, monkeypatch, tmp_path):
    require(AWS)
    node, gw = gw_node(node_factory, monkeypatch)
    env = client_env(tmp_path)
    aws = [AWS, "--endpoint-url", "http://" + gw]
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write_random(src / "big.bin", 9 << 20, 1)  # over awscli's 8 MiB: multipart
    write_random(src / "small.bin", 1000, 2)
    (src / "sub" / "a.txt").write_text("alpha\n")
    (src / "sub" / "b c.txt").write_text("bravo with a space\n")
    (src / "empty").write_bytes(b"")

    import json
    run(aws + ["s3", "mb", "s3://awsb"], env)
    run(aws + ["s3", "sync", str(src), "s3://awsb/tree"], env)
    run(aws + ["s3", "cp", str(src / "small.bin"), "s3://awsb/one/small.bin"], env)
    _, out, _ = run(aws + ["s3", "ls", "--recursive", "s3://awsb/"], env)
    sizes = {l.split(None, 3)[3]: int(l.split(None, 3)[2]) for l in out.splitlines() if l.strip()}
    assert sizes == {"one/small.bin": 1000, "tree/big.bin": 9 << 20, "tree/empty": 0,
                     "tree/small.bin": 1000, "tree/sub/a.txt": 6,
                     "tree/sub/b c.txt": 19}, out
    dst = tmp_path / "dst"
    run(aws + ["s3", "sync", "s3://awsb/tree", str(dst)], env)
    for rel in ["big.bin", "small.bin", "empty", "sub/a.txt", "sub/b c.txt"]:
        assert md5_file(dst / rel) == md5_file(src / rel), rel

    # a server-side copy of an object over awscli's multipart threshold: UploadPartCopy
    run(aws + ["s3", "cp", "s3://awsb/tree/big.bin", "s3://awsb/copy/big.bin"], env)
    run(aws + ["s3", "cp", "s3://awsb/copy/big.bin", str(tmp_path / "copied.bin")], env)
    assert md5_file(tmp_path / "copied.bin") == md5_file(src / "big.bin")
    run(aws + ["s3", "rm", "--recursive", "s3://awsb/copy/"], env)

    # s3api: head-object (ETag = MD5 of a single PUT), list-objects-v2 with a
    # delimiter, and in pages of 2 (continuation tokens)
    _, out, _ = run(aws + ["s3api", "head-object", "--bucket", "awsb", "--key", "one/small.bin"], env)
    h = json.loads(out)
    assert h["ContentLength"] == 1000
    assert h["ETag"] == '"%s"' % md5_file(src / "small.bin")
    _, out, _ = run(aws + ["s3api", "list-objects-v2", "--bucket", "awsb", "--delimiter", "/"], env)
    lo = json.loads(out)
    assert sorted(p["Prefix"] for p in lo["CommonPrefixes"]) == ["one/", "tree/"]
    _, out, _ = run(aws + ["s3api", "list-objects-v2", "--bucket", "awsb", "--prefix", "tree/",
                           "--page-size", "2"], env)
    lo = json.loads(out)
    assert [o["Key"] for o in lo["Contents"]] == ["tree/big.bin", "tree/empty", "tree/small.bin",
                                                   "tree/sub/a.txt", "tree/sub/b c.txt"]

    # rm, sync --delete, rm --recursive, rb
    run(aws + ["s3", "rm", "s3://awsb/one/small.bin"], env)
    os.unlink(src / "small.bin")
    run(aws + ["s3", "sync", "--delete", str(src), "s3://awsb/tree"], env)
    _, out, _ = run(aws + ["s3", "ls", "--recursive", "s3://awsb/"], env)
    assert "small.bin" not in out and "tree/big.bin" in out, out
    run(aws + ["s3", "rm", "--recursive", "s3://awsb/"], env)
    run(aws + ["s3", "rb", "s3://awsb"], env)
    _, out, _ = run(aws + ["s3", "ls"], env)
    assert "awsb" not in out

    # wrong secret: 403 SignatureDoesNotMatch
    bad = client_env(tmp_path, secret="wrong-secret")
    rc, _, err = run(aws + ["s3", "ls"], bad, ok=False)
    assert rc != 0 and "SignatureDoesNotMatch" in err, err
    rc, _, err = run(aws + ["s3api", "head-object", "--bucket", "x1x", "--key", "y"], bad, ok=False)
    assert rc != 0 and "403" in err, err


def test_s3cmd(node_factory, monkeypatch, tmp_path):
    require(S3CMD)
    node, gw = gw_node(node_factory, monkeypatch)
    env = client_env(tmp_path)

    def cfg(secret):
        p = tmp_path / ("s3cfg-" + secret)
        p.write_text("[default]\naccess_key = %s\nsecret_key = %s\nhost_base = %s\n"
                     "host_bucket = %s\nuse_https = False\nsignature_v2 = False\n"
                     "bucket_location = us-east-1\nmultipart_chunk_size_mb = 5\n"
                     % (AK, secret, gw, gw))
        return [S3CMD, "-c", str(p)]

    s3 = cfg(SK)
    write_random(tmp_path / "f.bin", 6 << 20, 3)  # over 5 MiB chunks: multipart
    (tmp_path / "t.txt").write_text("text\n")
    run(s3 + ["mb", "s3://s3cb"], env)
    run(s3 + ["put", str(tmp_path / "f.bin"), "s3://s3cb/d/f.bin"], env)
    run(s3 + ["put", str(tmp_path / "t.txt"), "s3://s3cb/t.txt"], env)
    _, out, _ = run(s3 + ["ls", "s3://s3cb"], env)
    assert "DIR" in out and "s3://s3cb/d/" in out and "s3://s3cb/t.txt" in out, out
    _, out, _ = run(s3 + ["ls", "-r", "s3://s3cb"], env)
    assert str(6 << 20) in out and "s3://s3cb/d/f.bin" in out, out
    run(s3 + ["get", "--force", "s3://s3cb/d/f.bin", str(tmp_path / "g.bin")], env)
    assert md5_file(tmp_path / "g.bin") == md5_file(tmp_path / "f.bin")
    run(s3 + ["del", "s3://s3cb/t.txt"], env)
    _, out, _ = run(s3 + ["ls", "-r", "s3://s3cb"], env)
    assert "t.txt" not in out and "f.bin" in out, out
    run(s3 + ["del", "--recursive", "--force", "s3://s3cb/d/"], env)  # DeleteObjects
    _, out, _ = run(s3 + ["ls", "-r", "s3://s3cb"], env)
    assert "f.bin" not in out, out
    rc, out, err = run(cfg("wrong-secret") + ["ls", "s3://s3cb"], env, ok=False)
    assert rc != 0 and "403" in err + out and "SignatureDoesNotMatch" in err + out, err


def test_rclone(node_factory, monkeypatch, tmp_path):
    require(RCLONE)
    node, gw = gw_node(node_factory, monkeypatch)

    def renv(secret):
        e = client_env(tmp_path)
        e.update({"RCLONE_CONFIG": str(tmp_path / "rclone.conf"),
                  "RCLONE_CONFIG_EL_TYPE": "s3", "RCLONE_CONFIG_EL_PROVIDER": "Other",
                  "RCLONE_CONFIG_EL_ACCESS_KEY_ID": AK,
                  "RCLONE_CONFIG_EL_SECRET_ACCESS_KEY": secret,
                  "RCLONE_CONFIG_EL_ENDPOINT": "http://" + gw,
                  "RCLONE_CONFIG_EL_REGION": "us-east-1"})
        return e

    env = renv(SK)
    (tmp_path / "rclone.conf").write_text("")
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    write_random(src / "big.bin", 6 << 20, 4)
    (src / "x.txt").write_text("x\n")
    (src / "d" / "y.txt").write_text("y\n")
    rc = [RCLONE, "--contimeout", "10s", "--timeout", "30s", "--low-level-retries", "2",
          "--retries", "1"]
    run(rc + ["mkdir", "el:rcb"], env)
    run(rc + ["copy", str(src), "el:rcb/p"], env)
    _, out, _ = run(rc + ["check", str(src), "el:rcb/p"], env)
    run(rc + ["ls", "el:rcb"], env)
    os.unlink(src / "x.txt")
    (src / "z.txt").write_text("z\n")
    run(rc + ["sync", str(src), "el:rcb/p"], env)
    _, out, _ = run(rc + ["ls", "el:rcb"], env)
    names = sorted(l.split(None, 1)[1] for l in out.splitlines() if l.strip())
    assert names == ["p/big.bin", "p/d/y.txt", "p/z.txt"], out
    _, out, err = run(rc + ["check", str(src), "el:rcb/p"], env)
    assert "0 differences found" in out + err, out + err
    dst = tmp_path / "dst"
    run(rc + ["copy", "el:rcb/p", str(dst)], env)
    assert md5_file(dst / "big.bin") == md5_file(src / "big.bin")
    rcode, out, err = run(rc + ["ls", "el:rcb"], renv("wrong-secret"), ok=False)
    assert rcode != 0 and "SignatureDoesNotMatch" in out + err and "403" in out + err, err


def boto(gw, secret=SK, access=AK):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url="http://" + gw, aws_access_key_id=access,
                        aws_secret_access_key=secret, region_name="us-east-1",
                        config=Config(signature_version="s3v4", retries={"max_attempts": 1},
                                      connect_timeout=10,
                                      read_timeout=60, s3={"addressing_style": "path"}))


def error_of(fn):
    import botocore.exceptions
    try:
        fn()
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]
    raise AssertionError("no error")


def test_boto3_multipart_range_copy_list(node_factory, monkeypatch, tmp_path):
    import random
    node, gw = gw_node(node_factory, monkeypatch)
    s3 = boto(gw)
    s3.create_bucket(Bucket="bot")
    assert error_of(lambda: s3.create_bucket(Bucket="bot")) == (409, "BucketAlreadyOwnedByYou")

    # multipart: 5 MiB + 5 MiB + 1 MiB and 7 bytes; ETag = md5 of the parts' md5s, "-3"
    r = random.Random(5)
    parts = [r.randbytes(5 << 20), r.randbytes(5 << 20), r.randbytes(1 << 20) + b"1234567"]
    up = s3.create_multipart_upload(Bucket="bot", Key="mp/obj", ContentType="x/test",
                                    Metadata={"who": "boto"})
    uid = up["UploadId"]
    etags = []
    for i, p in enumerate(parts):
        e = s3.upload_part(Bucket="bot", Key="mp/obj", UploadId=uid, PartNumber=i + 1, Body=p)["ETag"]
        assert e == '"%s"' % hashlib.md5(p).hexdigest()
        etags.append(e)
    # a part uploaded twice: the last one counts
    s3.upload_part(Bucket="bot", Key="mp/obj", UploadId=uid, PartNumber=2, Body=b"not this")
    s3.upload_part(Bucket="bot", Key="mp/obj", UploadId=uid, PartNumber=2, Body=parts[1])
    done = s3.complete_multipart_upload(
        Bucket="bot", Key="mp/obj", UploadId=uid,
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": i + 1} for i, e in enumerate(etags)]})
    whole = b"".join(parts)
    want = '"%s-3"' % hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert done["ETag"] == want
    h = s3.head_object(Bucket="bot", Key="mp/obj")
    assert h["ContentLength"] == len(whole) and h["ETag"] == want
    assert h["ContentType"] == "x/test" and h["Metadata"] == {"who": "boto"}
    assert h["LastModified"].year >= 2020
    got = s3.get_object(Bucket="bot", Key="mp/obj")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(whole).digest()
    # ranged GETs: inside a part, across parts, open-ended, suffix
    for rng, (a, b) in [("bytes=0-0", (0, 1)), ("bytes=100-200", (100, 201)),
                        ("bytes=%d-%d" % ((5 << 20) - 10, (10 << 20) + 10),
                         ((5 << 20) - 10, (10 << 20) + 11)),
                        ("bytes=%d-" % ((11 << 20) + 3), ((11 << 20) + 3, len(whole))),
                        ("bytes=-5", (len(whole) - 5, len(whole))),
                        ("bytes=0-%d" % (len(whole) + 100), (0, len(whole)))]:
        g = s3.get_object(Bucket="bot", Key="mp/obj", Range=rng)
        assert g["ResponseMetadata"]["HTTPStatusCode"] == 206, rng
        assert g["ContentRange"] == "bytes %d-%d/%d" % (a, b - 1, len(whole)), rng
        assert g["Body"].read() == whole[a:b], rng
    assert error_of(lambda: s3.get_object(Bucket="bot", Key="mp/obj",
                                          Range="bytes=%d-" % len(whole)))[0] == 416

    # a part too small in the middle; an unknown part; abort
    up = s3.create_multipart_upload(Bucket="bot", Key="mp/small")
    e1 = s3.upload_part(Bucket="bot", Key="mp/small", UploadId=up["UploadId"], PartNumber=1, Body=b"a")["ETag"]
    e2 = s3.upload_part(Bucket="bot", Key="mp/small", UploadId=up["UploadId"], PartNumber=2, Body=b"b")["ETag"]
    assert error_of(lambda: s3.complete_multipart_upload(
        Bucket="bot", Key="mp/small", UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"ETag": e1, "PartNumber": 1}, {"ETag": e2, "PartNumber": 2}]})) == \
        (400, "EntityTooSmall")
    assert error_of(lambda: s3.complete_multipart_upload(
        Bucket="bot", Key="mp/small", UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"ETag": e1, "PartNumber": 3}]})) == (400, "InvalidPart")
    s3.abort_multipart_upload(Bucket="bot", Key="mp/small", UploadId=up["UploadId"])
    assert error_of(lambda: s3.upload_part(Bucket="bot", Key="mp/small", UploadId=up["UploadId"],
                                           PartNumber=1, Body=b"a")) == (404, "NoSuchUpload")
    assert error_of(lambda: s3.head_object(Bucket="bot", Key="mp/small"))[0] == 404

    # single PUT, overwrite, copy, delete
    s3.put_object(Bucket="bot", Key="k1", Body=b"first")
    p = s3.put_object(Bucket="bot", Key="k1", Body=b"second version")
    assert p["ETag"] == '"%s"' % hashlib.md5(b"second version").hexdigest()
    assert s3.get_object(Bucket="bot", Key="k1")["Body"].read() == b"second version"
    c = s3.copy_object(Bucket="bot", Key="k1-copy", CopySource={"Bucket": "bot", "Key": "mp/obj"})
    assert c["CopyObjectResult"]["ETag"] == '"%s"' % hashlib.md5(whole).hexdigest()
    assert hashlib.md5(s3.get_object(Bucket="bot", Key="k1-copy")["Body"].read()).digest() == \
        hashlib.md5(whole).digest()
    s3.delete_object(Bucket="bot", Key="k1-copy")
    # UploadPartCopy: a range of one object and the whole of another as parts
    up = s3.create_multipart_upload(Bucket="bot", Key="pc")
    p1 = s3.upload_part_copy(Bucket="bot", Key="pc", UploadId=up["UploadId"], PartNumber=1,
                             CopySource={"Bucket": "bot", "Key": "mp/obj"},
                             CopySourceRange="bytes=100-%d" % (100 + (5 << 20) + 10 - 1))
    p2 = s3.upload_part_copy(Bucket="bot", Key="pc", UploadId=up["UploadId"], PartNumber=2,
                             CopySource={"Bucket": "bot", "Key": "k1"})
    assert p1["CopyPartResult"]["ETag"] == '"%s"' % hashlib.md5(whole[100:100 + (5 << 20) + 10]).hexdigest()
    s3.complete_multipart_upload(Bucket="bot", Key="pc", UploadId=up["UploadId"], MultipartUpload={
        "Parts": [{"ETag": p1["CopyPartResult"]["ETag"], "PartNumber": 1},
                  {"ETag": p2["CopyPartResult"]["ETag"], "PartNumber": 2}]})
    assert s3.get_object(Bucket="bot", Key="pc")["Body"].read() == \
        whole[100:100 + (5 << 20) + 10] + b"second version"
    assert error_of(lambda: s3.upload_part_copy(
        Bucket="bot", Key="pc", UploadId=up["UploadId"], PartNumber=1,
        CopySource={"Bucket": "bot", "Key": "k1"}, CopySourceRange="bytes=5-")) == (404, "NoSuchUpload")
    up = s3.create_multipart_upload(Bucket="bot", Key="pc2")
    assert error_of(lambda: s3.upload_part_copy(
        Bucket="bot", Key="pc2", UploadId=up["UploadId"], PartNumber=1,
        CopySource={"Bucket": "bot", "Key": "k1"}, CopySourceRange="bytes=5-"))[1] == "InvalidArgument"
    s3.abort_multipart_upload(Bucket="bot", Key="pc2", UploadId=up["UploadId"])
    s3.delete_object(Bucket="bot", Key="pc")
    assert error_of(lambda: s3.get_object(Bucket="bot", Key="k1-copy")) == (404, "NoSuchKey")
    assert error_of(lambda: s3.get_object(Bucket="nobucket", Key="x")) == (404, "NoSuchBucket")
    assert error_of(lambda: s3.put_object(Bucket="nobucket", Key="x", Body=b"1")) == (404, "NoSuchBucket")

    # listing: 25 names, pages of 7, with and without a delimiter
    for i in range(25):
        s3.put_object(Bucket="bot", Key="l/%s/%02d" % ("ab"[i % 2], i), Body=b"%d" % i)
    keys, token, pages = [], None, 0
    while True:
        kw = {"Bucket": "bot", "Prefix": "l/", "MaxKeys": 7}
        if token:
            kw["ContinuationToken"] = token
        page = s3.list_objects_v2(**kw)
        pages += 1
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert pages == 4
    assert keys == sorted("l/%s/%02d" % ("ab"[i % 2], i) for i in range(25))
    page = s3.list_objects_v2(Bucket="bot", Prefix="l/", Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["l/a/", "l/b/"]
    assert "Contents" not in page
    seen, token = [], None
    for _ in range(5):
        kw = {"Bucket": "bot", "Delimiter": "/", "MaxKeys": 1}
        if token:
            kw["ContinuationToken"] = token
        page = s3.list_objects_v2(**kw)
        seen.append([o["Key"] for o in page.get("Contents", [])] +
                    [p["Prefix"] for p in page.get("CommonPrefixes", [])])
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == [["k1"], ["l/"], ["mp/"]]
    v1 = s3.list_objects(Bucket="bot", Prefix="l/b/", Marker="l/b/05")
    assert [o["Key"] for o in v1["Contents"]] == ["l/b/%02d" % i for i in range(7, 25, 2)]
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["bot"]
    assert error_of(lambda: s3.delete_bucket(Bucket="bot")) == (409, "BucketNotEmpty")
    # DeleteObjects: a batch, one name twice and one that never existed
    dl = s3.delete_objects(Bucket="bot", Delete={"Objects": [{"Key": "l/a/%02d" % i} for i in range(0, 25, 2)]
                                                 + [{"Key": "l/a/00"}, {"Key": "no & such <key>"}]})
    assert sorted(d["Key"] for d in dl["Deleted"]) == sorted(
        ["l/a/%02d" % i for i in range(0, 25, 2)] + ["l/a/00", "no & such <key>"])
    assert not dl.get("Errors")
    page = s3.list_objects_v2(Bucket="bot", Prefix="l/")
    assert [o["Key"] for o in page["Contents"]] == ["l/b/%02d" % i for i in range(1, 25, 2)]

    # presigned GET
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "bot", "Key": "k1"}, ExpiresIn=300)
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.read() == b"second version"
    assert "X-Amz-Signature=" in url
    tampered = url.replace("/k1?", "/k1-copy?")
    assert tampered != url
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(tampered, timeout=30)
    assert ei.value.code == 403

    # wrong secret / unknown key
    assert error_of(lambda: boto(gw, secret="wrong").get_object(Bucket="bot", Key="k1")) == \
        (403, "SignatureDoesNotMatch")
    assert error_of(lambda: boto(gw, secret="wrong").put_object(Bucket="bot", Key="k9", Body=b"x")) == \
        (403, "SignatureDoesNotMatch")
    assert error_of(lambda: boto(gw, access="NOSUCHKEY").list_buckets()) == (403, "InvalidAccessKeyId")
    assert error_of(lambda: s3.head_object(Bucket="bot", Key="k9"))[0] == 404

    # unsigned requests are refused when keys are configured
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen("http://%s/bot/k1" % gw, timeout=30)
    assert ei.value.code == 403
    # the endpoint's own pages still answer plain requests
    with urllib.request.urlopen("http://%s/metrics" % gw, timeout=30) as resp:
        assert b"elliptics_http_requests_total" in resp.read()
    with urllib.request.urlopen("http://%s/" % gw, timeout=30) as resp:
        assert b"<html" in resp.read().lower()


def _sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signed_put(gw, path, body, payload_hash, extra=None, length=None):
    """A PUT signed here (header SigV4) claiming payload_hash for body: (status, body).
    body may be an iterable of pieces with length given (-1: send it chunked)."""
    t = time.gmtime()
    amzdate, day = time.strftime("%Y%m%dT%H%M%SZ", t), time.strftime("%Y%m%d", t)
    scope = "%s/us-east-1/s3/aws4_request" % day
    skey = _sign(_sign(_sign(_sign(("AWS4" + SK).encode(), day), "us-east-1"), "s3"), "aws4_request")
    hdrs = {"host": gw, "x-amz-date": amzdate, "x-amz-content-sha256": payload_hash}
    if length is None:
        length = len(body)
    if length >= 0:
        hdrs["content-length"] = str(length)
    hdrs.update(extra or {})
    signed = sorted(hdrs)
    creq = "PUT\n%s\n\n%s\n%s\n%s" % (path, "".join("%s:%s\n" % (h, hdrs[h]) for h in signed),
                                       ";".join(signed), payload_hash)
    sts = "AWS4-HMAC-SHA256\n%s\n%s\n%s" % (amzdate, scope, hashlib.sha256(creq.encode()).hexdigest())
    sig = hmac.new(skey, sts.encode(), hashlib.sha256).hexdigest()
    auth = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        AK, scope, ";".join(signed), sig)
    req = urllib.request.Request("http://%s%s" % (gw, path), data=body, method="PUT",
                                 headers=dict(hdrs, authorization=auth))
    try:
        with urllib.request.urlopen(req, timeout=CLI_T) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_large_objects_are_streamed(node_factory, monkeypatch):
    """A large PUT (Content-Length, and chunked of unknown length) and its GET go
    through the gateway without the node's memory growing with the object."""
    from conftest import RssSampler
    MiB = 1 << 20
    size = (64 if sanitized() else 256) * MiB
    node, gw = gw_node(node_factory, monkeypatch)
    s3 = boto(gw)
    s3.create_bucket(Bucket="large")
    s3.put_object(Bucket="large", Key="warm", Body=b"x" * 100000)
    s3.get_object(Bucket="large", Key="warm")["Body"].read()
    base = node.rss()

    def pieces(seed, n):
        import random
        r = random.Random(seed)
        block = r.randbytes(MiB)
        for i in range(n):
            yield block[:-8] + i.to_bytes(8, "little")

    def digest(seed, n):
        h = hashlib.sha256()
        for p in pieces(seed, n):
            h.update(p)
        return h.hexdigest()

    with RssSampler(node.pid) as srv:
        st, body = signed_put(gw, "/large/big", pieces(1, size // MiB), "UNSIGNED-PAYLOAD",
                              length=size)
        assert st == 200, body
        st, body = signed_put(gw, "/large/chunked", pieces(2, 64), "UNSIGNED-PAYLOAD", length=-1)
        assert st == 200, body
        for key, seed, n in (("big", 1, size // MiB), ("chunked", 2, 64)):
            h = hashlib.sha256()
            resp = s3.get_object(Bucket="large", Key=key)
            assert resp["ContentLength"] == n * MiB
            for chunk in resp["Body"].iter_chunks(MiB):
                h.update(chunk)
            assert h.hexdigest() == digest(seed, n), key
    if not sanitized():  # ASan's shadow memory and quarantine make RSS meaningless
        growth = srv.peak - base
        assert growth < 96 * MiB, "node RSS grew by %.0f MiB for a %d MiB object" % (
            growth / MiB, size // MiB)


def test_signed_payload_hash_is_verified(node_factory, monkeypatch):
    """The body's SHA-256 must match the signed x-amz-content-sha256: a mismatch
    stores nothing and leaves the previous object in place (small and streamed)."""
    node, gw = gw_node(node_factory, monkeypatch)
    s3 = boto(gw)
    s3.create_bucket(Bucket="dig")
    for size in (1000, 3 << 20):  # one write / a chunked upload
        good = os.urandom(size)
        st, _ = signed_put(gw, "/dig/k", good, hashlib.sha256(good).hexdigest())
        assert st == 200
        evil = os.urandom(size)
        st, body = signed_put(gw, "/dig/k", evil, hashlib.sha256(good).hexdigest())
        assert st == 400 and b"BadDigest" in body, body
        assert s3.get_object(Bucket="dig", Key="k")["Body"].read() == good
        st, _ = signed_put(gw, "/dig/new%d" % size, evil, hashlib.sha256(good).hexdigest())
        assert st == 400
        assert error_of(lambda: s3.head_object(Bucket="dig", Key="new%d" % size))[0] == 404
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="dig")["Contents"]] == ["k"]


def test_aws_chunked_streaming_upload(node_factory, monkeypatch):
    """A PUT with Content-Encoding aws-chunked and STREAMING-AWS4-HMAC-SHA256-PAYLOAD
    (what SDKs send for streamed uploads), signed by hand here."""
    node, gw = gw_node(node_factory, monkeypatch)
    s3 = boto(gw)
    s3.create_bucket(Bucket="chk")
    data = os.urandom(200000)
    t = time.gmtime()
    amzdate, day = time.strftime("%Y%m%dT%H%M%SZ", t), time.strftime("%Y%m%d", t)
    scope = "%s/us-east-1/s3/aws4_request" % day
    skey = _sign(_sign(_sign(_sign(("AWS4" + SK).encode(), day), "us-east-1"), "s3"), "aws4_request")
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)] + [b""]
    body_len = sum(len("%x;chunk-signature=%s\r\n" % (len(c), "0" * 64)) + len(c) + 2 for c in chunks)
    hdrs = {"host": gw, "x-amz-date": amzdate, "content-encoding": "aws-chunked",
            "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "x-amz-decoded-content-length": str(len(data)), "content-length": str(body_len)}
    signed = sorted(hdrs)
    creq = "PUT\n/chk/streamed\n\n%s\n%s\nSTREAMING-AWS4-HMAC-SHA256-PAYLOAD" % (
        "".join("%s:%s\n" % (h, hdrs[h]) for h in signed), ";".join(signed))
    sts = "AWS4-HMAC-SHA256\n%s\n%s\n%s" % (amzdate, scope, hashlib.sha256(creq.encode()).hexdigest())
    seed = hmac.new(skey, sts.encode(), hashlib.sha256).hexdigest()
    prev, body = seed, b""
    empty = hashlib.sha256(b"").hexdigest()
    for c in chunks:
        s = "AWS4-HMAC-SHA256-PAYLOAD\n%s\n%s\n%s\n%s\n%s" % (amzdate, scope, prev, empty,
                                                             hashlib.sha256(c).hexdigest())
        prev = hmac.new(skey, s.encode(), hashlib.sha256).hexdigest()
        body += b"%x;chunk-signature=%s\r\n" % (len(c), prev.encode()) + c + b"\r\n"
    assert len(body) == body_len
    auth = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        AK, scope, ";".join(signed), seed)
    req = urllib.request.Request("http://%s/chk/streamed" % gw, data=body, method="PUT",
                                 headers=dict(hdrs, authorization=auth))
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["ETag"] == '"%s"' % hashlib.md5(data).hexdigest()
    assert s3.get_object(Bucket="chk", Key="streamed")["Body"].read() == data


def test_cluster_with_copies_and_restart(node_factory, monkeypatch):
    """3 nodes, 2 copies, a gateway on each: what one writes the others read and list;
    the index and objects survive restarts of every node."""
    n1, g1 = gw_node(node_factory, monkeypatch, "--copies", "2", *FAST, name="n1")
    n2, g2 = gw_node(node_factory, monkeypatch, "--copies", "2", "--join", n1.addr, *FAST, name="n2")
    n3, g3 = gw_node(node_factory, monkeypatch, "--copies", "2", "--join", n1.addr, *FAST, name="n3")
    import json

    def ring_up(g):
        with urllib.request.urlopen("http://%s/ring.json" % g, timeout=30) as r:
            return json.loads(r.read())["counts"]["up"]
    for g in (g1, g2, g3):
        wait_for(lambda: ring_up(g) == 3, DEADLINE, what="3 nodes up in every node's ring")
    a, b, c = boto(g1), boto(g2), boto(g3)
    a.create_bucket(Bucket="ring")
    blobs = {}
    for i in range(30):
        k = "obj/%03d" % i
        blobs[k] = os.urandom(100 + i * 997)
        [a, b, c][i % 3].put_object(Bucket="ring", Key=k, Body=blobs[k])
    big = os.urandom(6 << 20)
    up = b.create_multipart_upload(Bucket="ring", Key="big")
    e1 = c.upload_part(Bucket="ring", Key="big", UploadId=up["UploadId"], PartNumber=1, Body=big[:5 << 20])["ETag"]
    e2 = a.upload_part(Bucket="ring", Key="big", UploadId=up["UploadId"], PartNumber=2, Body=big[5 << 20:])["ETag"]
    b.complete_multipart_upload(Bucket="ring", Key="big", UploadId=up["UploadId"],
                                MultipartUpload={"Parts": [{"ETag": e1, "PartNumber": 1},
                                                           {"ETag": e2, "PartNumber": 2}]})

    def check(clients):
        for cl in clients:
            names = []
            for page in cl.get_paginator("list_objects_v2").paginate(Bucket="ring", PaginationConfig={"PageSize": 8}):
                names += [o["Key"] for o in page.get("Contents", [])]
            assert names == ["big"] + sorted(blobs)
            for k, v in list(blobs.items())[::7]:
                assert cl.get_object(Bucket="ring", Key=k)["Body"].read() == v
            assert hashlib.md5(cl.get_object(Bucket="ring", Key="big")["Body"].read()).digest() == \
                hashlib.md5(big).digest()
            assert [x["Name"] for x in cl.list_buckets()["Buckets"]] == ["ring"]

    check([a, b, c])

    # Many writers at once into one bucket through all three gateways, and deletes
    # through a gateway other than the writer's: no name lost, none left over.
    import threading
    errors = []

    def writer(cl, base):
        try:
            for i in range(40):
                cl.put_object(Bucket="ring", Key="conc/%s-%02d" % (base, i), Body=b"%d" % i)
        except Exception as e:  # reported below
            errors.append(e)
    ts = [threading.Thread(target=writer, args=(boto(g), n)) for g, n in
          ((g1, "a"), (g2, "b"), (g3, "c"), (g1, "d"), (g2, "e"), (g3, "f"))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(CLI_T)
    assert not errors, errors
    want = sorted("conc/%s-%02d" % (n, i) for n in "abcdef" for i in range(40))
    for cl in (a, b, c):
        got = [o["Key"] for p in cl.get_paginator("list_objects_v2").paginate(Bucket="ring", Prefix="conc/")
               for o in p.get("Contents", [])]
        assert got == want
    for i in range(0, 40, 3):
        c.delete_object(Bucket="ring", Key="conc/a-%02d" % i)   # written through g1
        a.put_object(Bucket="ring", Key="conc/b-%02d" % i, Body=b"again")  # first through g2
    want = [k for k in want if not (k.startswith("conc/a-") and int(k[-2:]) % 3 == 0)]
    for cl in (a, b, c):
        got = {o["Key"]: o["Size"] for p in cl.get_paginator("list_objects_v2").paginate(
            Bucket="ring", Prefix="conc/") for o in p.get("Contents", [])}
        assert sorted(got) == want
        assert all(got["conc/b-%02d" % i] == 5 for i in range(0, 40, 3))
    for cl, n in ((a, "b"), (b, "c"), (c, "d")):
        cl.delete_objects(Bucket="ring", Delete={"Objects": [{"Key": "conc/%s-%02d" % (n, i)}
                                                             for i in range(40)]})
    for cl in (a, b, c):
        got = [o["Key"] for p in cl.get_paginator("list_objects_v2").paginate(Bucket="ring", Prefix="conc/")
               for o in p.get("Contents", [])]
        assert got == [k for k in want if k[5] in "aef"]
    for n in "aef":
        for i in range(40):
            b.delete_object(Bucket="ring", Key="conc/%s-%02d" % (n, i))
    assert "Contents" not in c.list_objects_v2(Bucket="ring", Prefix="conc/")

    # one node down: its copies are elsewhere
    n3.stop()
    check([a, b])
    n3.start()
    for n in (n1, n2, n3):
        n.restart()
    for g in (g1, g2, g3):
        wait_for(lambda: port_accepts(int(g.split(":")[1])), DEADLINE, what="the gateways")
        wait_for(lambda: ring_up(g) == 3, DEADLINE, what="3 nodes up after the restarts")

    last = []

    def all_ok():
        try:
            check([boto(g1), boto(g2), boto(g3)])
            return True
        except Exception as e:
            last[:] = [repr(e)[:2000]]
            return False
    try:
        wait_for(all_ok, DEADLINE, interval=0.5, what="listing and reads after restarting every node")
    except AssertionError as e:
        raise AssertionError("%s; last failure: %s" % (e, last)) from None


def test_keys_from_config_file_and_keys_file(node_factory, monkeypatch, tmp_path):
    """S3 keys from the config file (s3-access-key, s3-secret-key) and from
    --s3-keys FILE all work; a wrong secret of either is refused."""
    keys = tmp_path / "s3keys"
    keys.write_text("# access secret\nSECONDKEY second-secret\n\nTHIRDKEY third-secret\n")
    conf = tmp_path / "node.conf"
    conf.write_text("s3-access-key = CONFKEY\ns3-secret-key = conf-secret\ns3-keys = %s\n" % keys)
    node, gw = gw_node(node_factory, monkeypatch, "--config", str(conf), keys=False)
    boto(gw, access="CONFKEY", secret="conf-secret").create_bucket(Bucket="keys")
    for ak, sk in (("SECONDKEY", "second-secret"), ("THIRDKEY", "third-secret")):
        cl = boto(gw, access=ak, secret=sk)
        cl.put_object(Bucket="keys", Key=ak, Body=sk.encode())
        assert cl.get_object(Bucket="keys", Key=ak)["Body"].read() == sk.encode()
        assert error_of(lambda: boto(gw, access=ak, secret="x").list_buckets()) == \
            (403, "SignatureDoesNotMatch")
    assert error_of(lambda: boto(gw, access=AK, secret=SK).list_buckets()) == (403, "InvalidAccessKeyId")
    # unsigned requests are refused although they come from loopback
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen("http://%s/keys/SECONDKEY" % gw, timeout=30)
    assert ei.value.code == 403


def local_non_loopback_ip():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))
        ip = s.getsockname()[0]
    except OSError:
        ip = None
    finally:
        s.close()
    return ip if ip and not ip.startswith("127.") else None


def test_anonymous_mode_is_loopback_only(node_factory, monkeypatch):
    ip = local_non_loopback_ip()
    if not ip:
        pytest.skip("no non-loopback IPv4 address on this machine to test refusal from")
    node, gw = gw_node(node_factory, monkeypatch, keys=False, http_host="0.0.0.0")
    port = gw.split(":")[1]

    def req(host, method, path, data=None):
        r = urllib.request.Request("http://%s:%s%s" % (host, port, path), data=data, method=method)
        try:
            with urllib.request.urlopen(r, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    assert req("127.0.0.1", "PUT", "/anon")[0] == 200
    assert req("127.0.0.1", "PUT", "/anon/k", b"unsigned body")[0] == 200
    assert req("127.0.0.1", "GET", "/anon/k") == (200, b"unsigned body")
    # an aws-chunked body is decoded in anonymous mode too
    framed = b"5;chunk-signature=" + b"0" * 64 + b"\r\nhello\r\n0;chunk-signature=" + b"0" * 64 + b"\r\n\r\n"
    r = urllib.request.Request("http://127.0.0.1:%s/anon/chunked" % port, data=framed, method="PUT",
                               headers={"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                                        "x-amz-decoded-content-length": "5"})
    with urllib.request.urlopen(r, timeout=30) as resp:
        assert resp.status == 200
    assert req("127.0.0.1", "GET", "/anon/chunked") == (200, b"hello")
    st, body = req(ip, "GET", "/anon/k")
    assert st == 403 and b"AccessDenied" in body
    # plain GET / from a browser is still the ring page
    st, body = req("127.0.0.1", "GET", "/")
    assert st == 200 and b"<html" in body.lower()
