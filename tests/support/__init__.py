"""Test services shared by the push tests: the Web Push test service and the FCM and APNs stand-ins."""
