"""Copy registry -> layout and registry -> registry: ironcore_image_copy against skopeo and curl.

Peer: `skopeo copy --all --preserve-digests` (docker:// -> oci: and docker:// -> docker://). Limit: curl
GETs of every blob and document then `sync` (to a layout), or each blob streamed from one registry's GET
into the other's monolithic PUT (between registries). "ours" runs only once the module exists.
Run: make bench-copy BENCH_ARGS=--size-mib=64
"""

from __future__ import annotations

import os
import typing as t

import _common as c

MODULE = "ironcore.image.ironcore_image_copy"
REPOSITORY = "bench/image"


def copy_args(source: c.Registry, destination: dict[str, object]) -> dict[str, object]:
    """The module's arguments: each side a dict with its own connection options."""
    return {
        "source": dict(source.registry_args, name="%s/%s:1.0" % (source.host, REPOSITORY)),
        "destination": destination,
    }


def bench(ansible: c.Ansible, ping: c.Run, workdir: str, size_mib: int, rounds: int) -> list[c.Result]:
    available = ansible.has_module(MODULE)
    if not available:
        print("  %s: module not available (ansible-doc does not know it); measuring peer and limit only" % MODULE)
    source = c.registry(os.path.join(workdir, "source"))
    targets: dict[int, c.Registry] = {}
    try:
        c.published(ansible, workdir, size_mib, source, REPOSITORY)
        image = c.image_files(os.path.join(workdir, "layout"))
        c.warm(c.tree_files(source.storage))

        def target(round_number: int) -> c.Registry:
            # A fresh destination registry per round: nothing to skip, nothing to mount.
            if round_number not in targets:
                for old in targets.values():
                    old.stop()
                    c.remove(os.path.dirname(old.storage))
                targets.clear()
                targets[round_number] = c.registry(os.path.join(workdir, "target-%d" % round_number))
            return targets[round_number]

        def fresh(round_number: int, who: str) -> str:
            # Only this round's copy is kept: at 4 GiB, three contenders times three rounds of layouts filled
            # the disk, and the registries answered 500.
            for earlier in range(round_number + 1):
                c.remove(os.path.join(workdir, "%s-%d" % (who, earlier)))
            return os.path.join(workdir, "%s-%d" % (who, round_number))

        to_layout = to_layout_contenders(ansible, source, image, fresh)
        to_registry = to_registry_contenders(ansible, source, image, target)
        results = []
        for label, contenders in (("registry -> layout", to_layout), ("registry -> registry", to_registry)):
            if not available:
                del contenders["ours"]
            print(" ", label)
            medians = c.rounds(contenders, rounds)
            for who in ("ours-layout", "peer-layout", "limit-layout"):
                fresh(rounds, who)
            results.append(
                c.Result(
                    "copy",
                    "%s, %d blobs, %.0f MiB" % (label, len(image.blobs), c.mib(image.blobs.values())),
                    medians.get("ours"),
                    medians["peer"],
                    medians["limit"],
                    1.1,
                    0.95,
                    ping,
                    note="" if available else "ironcore_image_copy not available",
                )
            )
        return results
    finally:
        source.stop()
        for registry in targets.values():
            registry.stop()


def to_layout_contenders(
    ansible: c.Ansible, source: c.Registry, image: c.ImageFiles, fresh: t.Callable[[int, str], str]
) -> dict[str, c.Contender]:
    def ours(round_number: int) -> c.Run:
        layout = fresh(round_number, "ours-layout")
        return ansible.module(MODULE, copy_args(source, {"layout": layout, "name": c.NAME}))[0]

    def peer(round_number: int) -> c.Run:
        layout = fresh(round_number, "peer-layout")
        reference = "docker://%s/%s:1.0" % (source.host, REPOSITORY)
        return c.skopeo(*source.skopeo_flags("src-"), reference, "oci:%s:%s" % (layout, c.NAME))

    def limit(round_number: int) -> c.Run:
        def steps() -> c.Run:
            blobs = os.path.join(fresh(round_number, "limit-layout"), "blobs", "sha256")
            os.makedirs(blobs)
            total, files = c.NOTHING, []
            for digest in image.blobs:
                files.append(os.path.join(blobs, digest.split(":", 1)[1]))
                total += c.curl_get(source, REPOSITORY, digest, files[-1])
            for document in image.documents:
                files.append(os.path.join(blobs, document.digest.split(":", 1)[1]))
                total += c.curl_get_document(source, REPOSITORY, document, files[-1])
            return total + c.sync(files)

        return c.timed(steps)

    return {"ours": ours, "peer": peer, "limit": limit}


def to_registry_contenders(
    ansible: c.Ansible, source: c.Registry, image: c.ImageFiles, target: t.Callable[[int], c.Registry]
) -> dict[str, c.Contender]:
    def ours(round_number: int) -> c.Run:
        destination = target(round_number)
        args = copy_args(source, dict(destination.registry_args, name="%s/bench/ours:1.0" % destination.host))
        return ansible.module(MODULE, args)[0]

    def peer(round_number: int) -> c.Run:
        destination = target(round_number)
        flags = [*source.skopeo_flags("src-"), *destination.skopeo_flags("dest-")]
        from_ref = "docker://%s/%s:1.0" % (source.host, REPOSITORY)
        return c.skopeo(*flags, from_ref, "docker://%s/bench/skopeo:1.0" % destination.host)

    def limit(round_number: int) -> c.Run:
        return c.timed(lambda: stream_image(source, target(round_number), image))

    return {"ours": ours, "peer": peer, "limit": limit}


def stream_image(source: c.Registry, destination: c.Registry, image: c.ImageFiles) -> c.Run:
    """Each blob piped from a GET into a monolithic PUT, then the documents, the tag last."""
    total = c.NOTHING
    get = " ".join("'%s'" % word for word in c.curl_base(source))
    put = " ".join("'%s'" % word for word in c.curl_base(destination))
    for digest in image.blobs:
        session, location = c.curl_upload_session(destination, "bench/curl")
        blob_url = c.url(source, "%s/blobs/%s" % (REPOSITORY, digest))
        pipe = "%s '%s' | %s -X PUT -H 'Content-Type: application/octet-stream' --upload-file - '%s'" % (
            get,
            blob_url,
            put,
            location + "digest=" + digest,
        )
        total += session + c.run(["bash", "-o", "pipefail", "-c", pipe])
    for number, document in enumerate(image.documents):
        reference = "1.0" if number == len(image.documents) - 1 else document.digest
        total += c.curl_get_document(source, REPOSITORY, document, document.path + ".copy")
        copied = c.Document(document.digest, document.media_type, document.path + ".copy")
        total += c.curl_put_document(destination, "bench/curl", reference, copied)
        os.unlink(copied.path)
    return total


def main() -> None:
    c.run_benchmark(__doc__ or "", "copy-", bench)


if __name__ == "__main__":
    main()
