"""An example ROS 2 node that embeds the segmenter: it subscribes to a camera's image topic,
segments each frame with runtime.api.Segmenter and publishes the labels (mono8 trainIds) and an
overlay beside it, with the input's header, as `segment.py --out-bag` writes them to a bag.

NOT EXECUTED in this project: ROS 2 (rclpy, cv_bridge) cannot be installed on its machines, so
this file is written against the rclpy and cv_bridge documentation only (README, "Verified on").
Run it in a sourced ROS 2 workspace with the project installed (pip install '.[runtime]'):

    python examples/ros2_node.py --ros-args -p model:=models/export/gen_student_int8.onnx \
        -r image:=/camera/front/image_raw

It is an example, not part of the runtime package: nothing imports it and the tests do not
collect it.
"""
import rclpy
from cv_bridge import CvBridge
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from runtime.api import Segmenter


class SegmenterNode(Node):
    """image -> segmentation/labels and segmentation/overlay, one frame per callback.

    The sensor-data QoS keeps only the newest frames: when inference is slower than the camera,
    frames are dropped at the subscription (as segment.py --realtime drops them) instead of queueing.
    """

    def __init__(self):
        super().__init__("segmenter")
        model = self.declare_parameter("model", "models/export/gen_student_int8.onnx").value
        alpha = self.declare_parameter("alpha", 0.5).value
        self.segmenter = Segmenter(model, device=self.declare_parameter("device", "cpu").value, alpha=alpha)
        self.bridge = CvBridge()
        self.labels = self.create_publisher(Image, "segmentation/labels", 10)
        self.overlay = self.create_publisher(Image, "segmentation/overlay", 10)
        self.create_subscription(Image, "image", self.on_image, qos_profile_sensor_data)
        contract = self.segmenter.contract
        self.get_logger().info(f"{model}: {len(contract.classes)} classes, input {contract.input_size}")

    def on_image(self, message: Image) -> None:
        frame = self.bridge.imgmsg_to_cv2(message, desired_encoding="bgr8")
        labels = self.segmenter.segment(frame)
        out = self.bridge.cv2_to_imgmsg(labels, encoding="mono8", header=message.header)
        self.labels.publish(out)
        if self.overlay.get_subscription_count():  # render only for someone watching
            overlay = self.segmenter.overlay(frame, labels)
            self.overlay.publish(self.bridge.cv2_to_imgmsg(overlay, encoding="bgr8", header=message.header))

    def destroy_node(self) -> None:
        self.segmenter.close()
        super().destroy_node()


def main() -> None:
    rclpy.init()
    node = SegmenterNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
