"""The darknet handler: YOLO object detection on one image per record, in-process or with the darknet CLI.

    conveyor:
      handler:
        name: darknet
        backend: auto        # opencv | cli | auto (opencv when cv2 has readNetFromDarknet, else cli)
        threshold: 0.25      # report a class when its probability is above this
        nms: 0.45            # IoU above which a weaker box of the same class is dropped (opencv)
        cfg: ...             # default /usr/share/darknet/cfg/yolov3-tiny.cfg (Debian's darknet package)
        weights: ...         # a weights file; default <weights_dir>/yolov3-tiny.weights
        weights_dir: ...     # default /opt/conveyor/weights, then ~/.cache/conveyor/weights
        names: ...           # class names, one a line; default /usr/share/darknet/data/coco.names
        input_size: 416      # network input side (opencv); the CLI uses the cfg's width/height
        max_pixels: 100000000  # larger images are refused before they are decoded
        max_side: 4096       # larger images are scaled down (aspect kept) before inference and drawing
        darknet: darknet     # the CLI binary (a path, or a name looked up on the record's PATH)

Per input `<stem>.<ext>` it writes two files to the output dir, whatever the backend:
  <stem>.json  [{"class": "dog", "confidence": 0.56, "box": {"x": 131, "y": 223, "w": 178, "h": 316}}, ...]
               one entry per (box, class) above the threshold, highest confidence first; boxes in
               pixels of the input image (top-left corner, width, height). The CLI prints no boxes,
               so its entries have class and confidence only (confidence to the percent it prints).
  <stem>.jpg   the image annotated with boxes and labels: .jpg when the input is a JPEG, else .png,
  <stem>.png   of the input's size (of the scaled-down image when the input exceeds max_side).

Backends
  opencv  cv2.dnn.readNetFromDarknet (opencv-python-headless < 5: OpenCV 5 removed the darknet
          importer). The network is loaded once, in setup(), and kept for every record. The
          image is prepared exactly as darknet does it (letterbox, darknet's own bilinear
          resize, grey 0.5 padding), so both backends find the same classes with the same
          probabilities. OpenCV's YOLO layer zeroes class scores <= 0.2, so this backend needs
          threshold >= 0.2 (auto picks cli below that). The deadline and the shutdown event are
          checked before decoding and before inference; one inference is not interruptible
          (about 60 ms for yolov3-tiny, the first one about 0.5 s).
  cli     `darknet detector test DATA CFG WEIGHTS IMAGE -thresh T -out PREFIX` through
          conveyor.child.run_child (deadline, SIGTERM/SIGKILL of the process group, log capture),
          with a DATA file written to the work dir naming the `names` file (the plain `detect`
          command hard-codes Debian's coco.data). Its `<class>: <pct>%` lines are parsed; the
          annotated image is darknet's own drawing. darknet's nms is fixed at 0.45.

Inputs are always decoded by Pillow first, so every backend sees the same pixels and a bad
input is a HandlerError with a clear message, never a silent empty result: the darknet binary
exits 0 on an unreadable image (it runs on a blank 10x10 picture instead) and appends the
file name to `bad.list` through system(), which a crafted name turns into a shell command.
The CLI therefore only ever gets a PNG that this handler wrote into the work dir (also its
cwd). The EXIF orientation is applied, alpha is flattened onto white, other modes become RGB.
JPEGs larger than max_side are decoded at a reduced scale (libjpeg's DCT scaling: a 10000x10000
JPEG decodes at 5000x5000 in ~0.7 s); other formats are decoded in full (4 bytes a pixel: ~400 MB
and ~4 s for a 100-megapixel PNG) and scaled down at once.

Modules: handler.py (the handler, its options and backends), picture.py (decoding the input, drawing
the output), yolo.py (darknet's letterbox, YOLO decoding, nms, the CLI's printed detections),
weights.py (the YOLOv3-tiny files: fetched, verified, located).
"""

from conveyor.handlers.darknet.handler import IMAGE_WEIGHTS_DIR, DarknetHandler, DarknetOptions
from conveyor.handlers.darknet.picture import Picture, draw_detections, load_picture
from conveyor.handlers.darknet.yolo import Detection, parse_darknet_stdout

__all__ = [
    "IMAGE_WEIGHTS_DIR",
    "DarknetHandler",
    "DarknetOptions",
    "Detection",
    "Picture",
    "draw_detections",
    "load_picture",
    "parse_darknet_stdout",
]
