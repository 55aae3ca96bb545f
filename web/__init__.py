"""edgekit in the browser: the JavaScript runtime (ES modules in this folder, its own package.json) and
`edgekit web`, which writes a static site around a model exported with ``--target web`` (site.py).

    from edgekit.web.site import write_site
    write_site("soma-web.onnx", out="site/")
"""
